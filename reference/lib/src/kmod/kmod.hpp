// SPDX-License-Identifier: MIT
// The kernel backend (kmod/backend.cpp): what other parts of libaem may ask
// of it beyond the Backend interface (make_kmod_backend() is declared in
// backend.hpp).
#pragma once

namespace aem::detail {

// True on a thread that is running a handler of a kmod context right now
// (in_handler() must also say so: aem_shutdown() is -EBUSY there).
bool kmod_in_handler();

}  // namespace aem::detail
