// Shared helpers of the C API tests (aem_lib_tests): pipes, loopback TCP
// sockets, a fixture that gives every test a fresh implicit context, and a
// helper that runs a lambda in a forked child (for env-var policy, fork
// inheritance and scheduling changes that must not leak into the runner).
//
// Synchronisation rule of these tests: pipes, eventfds, condition
// variables; aem_dispatch() and poll() timeouts are only upper bounds for a
// wait that is expected to end much earlier. Nothing sleeps to synchronise.
#pragma once

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <utility>

#include <gtest/gtest.h>

#include "aem.h"
#include "aem_req.hpp"

namespace aemtest {

// Handlers that do nothing, one per family (the accept one closes the fd it
// is given, so no descriptor leaks).
inline void noop_soft(int, uint64_t, uint64_t) {}
inline void noop_timer(int, uint64_t) {}
inline void noop_fd(int, int, unsigned) {}
inline void noop_accept(int, int, int nfd) { close(nfd); }
inline void noop_read(int, int, const void*, size_t) {}
inline void noop_close(int, int) {}
inline void noop_sk(int, int, int, int) {}
inline void noop_sock(int, int, unsigned) {}

// Upper bound for any wait that should end quickly (sanitizers, loaded CI).
constexpr int kWaitMs = 20000;

inline uint64_t mono_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

inline uint64_t clock_ns(clockid_t c) {
  timespec ts;
  clock_gettime(c, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

inline timespec ts_of(uint64_t ns) {
  timespec t;
  t.tv_sec = static_cast<time_t>(ns / 1000000000ull);
  t.tv_nsec = static_cast<long>(ns % 1000000000ull);
  return t;
}

inline pid_t tid() { return static_cast<pid_t>(syscall(SYS_gettid)); }

// A unique fd, closed on destruction.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1) {
    if (fd_ >= 0) close(fd_);
    fd_ = fd;
  }
  explicit operator bool() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

struct Pipe {
  Fd rd, wr;
  Pipe() {
    int p[2];
    if (pipe2(p, O_CLOEXEC) == 0) {
      rd.reset(p[0]);
      wr.reset(p[1]);
    }
  }
};

// Writes all of buf (blocking fd).
inline bool write_all(int fd, const void* buf, size_t len) {
  const char* p = static_cast<const char*>(buf);
  while (len) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

// Reads exactly len bytes, waiting at most timeout_ms for each part.
// Returns false on timeout, EOF or error.
inline bool read_exact(int fd, void* buf, size_t len, int timeout_ms = kWaitMs) {
  char* p = static_cast<char*>(buf);
  while (len) {
    pollfd pfd{fd, POLLIN, 0};
    int r = poll(&pfd, 1, timeout_ms);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    ssize_t n = read(fd, p, len);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

// True when fd becomes readable within timeout_ms.
inline bool wait_readable(int fd, int timeout_ms = kWaitMs) {
  pollfd pfd{fd, POLLIN, 0};
  for (;;) {
    int r = poll(&pfd, 1, timeout_ms);
    if (r < 0 && errno == EINTR) continue;
    return r == 1;
  }
}

// ---------------------------------------------------------------------------
// Loopback TCP.

inline uint16_t local_port(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) < 0) return 0;
  return ntohs(a.sin_port);
}

// A TCP socket listening on 127.0.0.1, port chosen by the kernel.
inline Fd tcp_listener(int backlog = 128) {
  Fd s(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP));
  if (!s) return s;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  if (bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) < 0 || listen(s.get(), backlog) < 0)
    return Fd();
  return s;
}

inline Fd tcp_connect(uint16_t port) {
  Fd c(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP));
  if (!c) return c;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  for (;;) {
    if (connect(c.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) return c;
    if (errno != EINTR) return Fd();
  }
}

// A connected loopback TCP pair: client (connect side) and server (accepted).
struct TcpPair {
  Fd client, server;
  TcpPair() {
    Fd l = tcp_listener(4);
    if (!l) return;
    client = tcp_connect(local_port(l.get()));
    if (!client) return;
    server.reset(accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC));
  }
  bool ok() const { return client && server; }
};

inline Fd udp_socket() { return Fd(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)); }

// ---------------------------------------------------------------------------
// Waiting for handler effects with aem_dispatch() as the upper bound.

// Runs aem_dispatch() until pred() holds or timeout_ms passed.
template <typename Pred>
bool dispatch_until(Pred pred, int timeout_ms = kWaitMs) {
  const uint64_t end = mono_ns() + static_cast<uint64_t>(timeout_ms) * 1000000ull;
  while (!pred()) {
    const uint64_t now = mono_ns();
    if (now >= end) return pred();
    int left = static_cast<int>((end - now) / 1000000ull) + 1;
    int r = aem_dispatch(left < 1000 ? left : 1000);
    if (r < 0 && r != -EINTR) return pred();
  }
  return true;
}

// A counter other threads wait on (THREAD/PROCESS executor tests).
class Counter {
 public:
  void add(uint64_t n = 1) {
    {
      std::lock_guard lk(mu_);
      v_ += n;
    }
    cv_.notify_all();
  }
  uint64_t get() {
    std::lock_guard lk(mu_);
    return v_;
  }
  bool wait_for(uint64_t at_least, int timeout_ms = kWaitMs) {
    std::unique_lock lk(mu_);
    return cv_.wait_for(lk, std::chrono::milliseconds(timeout_ms), [&] { return v_ >= at_least; });
  }
  void reset() {
    std::lock_guard lk(mu_);
    v_ = 0;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t v_ = 0;
};

// ---------------------------------------------------------------------------
// The fixture: each test starts and ends with no implicit context, so
// handlers, policy and registrations never leak from one test to the next.

class AemTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(aem_shutdown(), 0); }
  void TearDown() override { EXPECT_EQ(aem_shutdown(), 0); }
};

// Checks a failing call: ret is -err and errno is err.
#define EXPECT_AEM_ERR(call, err)                                  \
  do {                                                             \
    errno = 0;                                                     \
    const long aem_ret_ = static_cast<long>(call);                 \
    const int aem_errno_ = errno;                                  \
    EXPECT_EQ(aem_ret_, -static_cast<long>(err)) << #call;         \
    EXPECT_EQ(aem_errno_, (err)) << #call << ": errno";            \
  } while (0)

// ---------------------------------------------------------------------------
// Forked children. The lambda runs in a child with a fresh implicit context
// (the fixture shut the parent's down) unless the parent made calls first.
// It returns 0 for success; CHILD_CHECK reports a failed condition on stderr
// and returns its line number. The parent gets the exit status: 0 success,
// a positive code from the child, -1 if the child did not end within
// timeout_ms (it is killed), -2 when it died from a signal.

#define CHILD_CHECK(cond)                                                          \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      fprintf(stderr, "child %d: check failed at %s:%d: %s (errno %d)\n", getpid(), \
              __FILE__, __LINE__, #cond, errno);                                   \
      return __LINE__ % 250 + 1;                                                   \
    }                                                                              \
  } while (0)

inline int run_in_child(const std::function<int()>& fn, int timeout_ms = 60000) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) return -3;
  if (pid == 0) {
    int rc = 0;
    try {
      rc = fn();
    } catch (...) {
      rc = 254;
    }
    fflush(stderr);
    _exit(rc & 0xff);
  }
  int pfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  bool done = true;
  if (pfd >= 0) {
    pollfd p{pfd, POLLIN, 0};
    int r;
    do r = poll(&p, 1, timeout_ms);
    while (r < 0 && errno == EINTR);
    done = r == 1;
    close(pfd);
  }
  if (!done) kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!done) return -1;
  if (WIFSIGNALED(status)) {
    fprintf(stderr, "child %d: killed by signal %d\n", pid, WTERMSIG(status));
    return -2;
  }
  return WEXITSTATUS(status);
}

}  // namespace aemtest

// Runs the lambda in a forked child (run_in_child) and expects exit status 0.
#define EXPECT_CHILD_OK(...)                                                           \
  do {                                                                                 \
    const int child_rc_ = ::aemtest::run_in_child(__VA_ARGS__);                        \
    EXPECT_EQ(child_rc_, 0) << "the forked child failed: see its report on stderr "    \
                               "(-1: timed out, -2: killed by a signal)";              \
  } while (0)
