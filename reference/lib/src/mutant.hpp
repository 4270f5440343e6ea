// SPDX-License-Identifier: MIT
// Mutation testing: build options that inject one named defect into libaem, so that
// `./cglcert mutants` can show that the conformance suite catches each one
// (ci/cglcert/mutants.py declares, per mutant, the requirement it breaks).
//
// The CMake cache string AEM_MUTANT=<name> defines AEM_MUTANT_<name>=1 for the
// library's sources. By default it is empty: every AEM_MUTANT(x) below is 0 and
// the library compiles exactly as without this header. Each defect is a few
// lines under `#if AEM_MUTANT(x)` (or `if constexpr (AEM_MUTANT(x))`), marked
// "MUTANT x" in reference/lib/src/user/engine.cpp and reference/lib/src/c_api.cpp.
//
// The `#define AEM_MUTANT_<name> 0` lines are the list of mutants: CMake
// validates AEM_MUTANT against them, ci/tests/test_mutants.py checks that
// mutants.py declares the same ones and that each is used in the sources.
#pragma once

// One evsoft_raise() in a thousand (per registration) is counted, never queued.
#ifndef AEM_MUTANT_drop_occurrence
#define AEM_MUTANT_drop_occurrence 0
#endif
// Every priority on one FIFO level: dispatch in activation order.
#ifndef AEM_MUTANT_fifo_dispatch
#define AEM_MUTANT_fifo_dispatch 0
#endif
// A second worker thread serves the EXEC_THREAD queue: its handlers overlap.
#ifndef AEM_MUTANT_overlap
#define AEM_MUTANT_overlap 0
#endif
// A disabled registration is queued and delivered all the same.
#ifndef AEM_MUTANT_deliver_disabled
#define AEM_MUTANT_deliver_disabled 0
#endif
// Ids wrap after 4096 without skipping the live ones.
#ifndef AEM_MUTANT_reuse_live_id
#define AEM_MUTANT_reuse_live_id 0
#endif
// The registration limit (AEM_MAX_REGISTRATIONS) is not enforced.
#ifndef AEM_MUTANT_ignore_limit
#define AEM_MUTANT_ignore_limit 0
#endif
// The accept handler gets the accepted fd where the listening fd belongs.
#ifndef AEM_MUTANT_wrong_handler_arg
#define AEM_MUTANT_wrong_handler_arg 0
#endif
// A timer handler is told one expiration however many it consumes.
#ifndef AEM_MUTANT_lose_timer_overruns
#define AEM_MUTANT_lose_timer_overruns 0
#endif
// The second chunk read from each socket is dropped.
#ifndef AEM_MUTANT_lose_read_data
#define AEM_MUTANT_lose_read_data 0
#endif
// Errors are counted in the statistics, never reported to the error handler.
#ifndef AEM_MUTANT_skip_error_notification
#define AEM_MUTANT_skip_error_notification 0
#endif

// Usable in `#if` and in constant expressions; a misspelt name is a compile
// error in the latter (and the unit tests check the names used in `#if`).
#define AEM_MUTANT(name) (AEM_MUTANT_##name)

static_assert(AEM_MUTANT_drop_occurrence + AEM_MUTANT_fifo_dispatch + AEM_MUTANT_overlap +
                      AEM_MUTANT_deliver_disabled + AEM_MUTANT_reuse_live_id +
                      AEM_MUTANT_ignore_limit + AEM_MUTANT_wrong_handler_arg +
                      AEM_MUTANT_lose_timer_overruns + AEM_MUTANT_lose_read_data +
                      AEM_MUTANT_skip_error_notification <=
                  1,
              "at most one mutant at a time");
