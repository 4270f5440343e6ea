// SPDX-License-Identifier: MIT
// aem/aem.hpp - the C++ API of libaem (being written).
#pragma once

#include "aem.h"
