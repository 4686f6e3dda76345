// The search kernel in portable scalar C++ (the compiler may still vectorise it for the baseline
// ISA); used on CPUs without AVX2 and on non-x86 machines.
#include "search.h"

#define EAE_ISA generic
#include "search_impl.h"
