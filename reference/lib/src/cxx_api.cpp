// SPDX-License-Identifier: MIT
// The C++ API (aem/aem.hpp) over the backends.
#include "aem/aem.hpp"
