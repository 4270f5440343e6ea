// Tests of the C++ registration calls of every event family: timers with
// std::chrono, socket read/accept/close/TCP state/socket state, any fd.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <system_error>
#include <vector>

#include "aem/aem.hpp"
#include "aem_req.hpp"
#include "cxx_test_util.hpp"

using namespace std::chrono_literals;

namespace {

using cxx_test::dispatch_until;
using cxx_test::kBound;
using cxx_test::thrown_code;

aem::Context fresh() { return aem::Context(aem::Options{.backend = aem::BackendKind::user}); }

struct Fd {
  int fd = -1;
  Fd() = default;
  explicit Fd(int f) : fd(f) {}
  Fd(Fd&& o) noexcept : fd(std::exchange(o.fd, -1)) {}
  ~Fd() { reset(); }
  void reset() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  operator int() const { return fd; }
};

struct Pair {
  Fd a, b;
};
Pair socket_pair() {
  int sv[2];
  EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  return {Fd(sv[0]), Fd(sv[1])};
}

// A listening TCP socket on 127.0.0.1 and its port.
Fd tcp_listener(uint16_t& port) {
  Fd l(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  EXPECT_EQ(listen(l, 16), 0);
  socklen_t len = sizeof a;
  EXPECT_EQ(getsockname(l, reinterpret_cast<sockaddr*>(&a), &len), 0);
  port = ntohs(a.sin_port);
  return l;
}

Fd tcp_connect(uint16_t port) {
  Fd c(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  EXPECT_EQ(connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  return c;
}

uint16_t local_port(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}

}  // namespace

// ---------------------------------------------------------------------------
// Timers.

TEST(CxxTimer, PeriodicWithChrono) {
  AEM_REQ("AEM-3.6.3", "AEM-3.1.2");
  aem::Context ctx = fresh();
  uint64_t expirations = 0;
  int calls = 0;
  const auto start = std::chrono::steady_clock::now();
  aem::Registration t = ctx.timer(2ms, 2ms, [&](const aem::TimerEvent& e) {
    EXPECT_GE(e.expirations, 1u);
    expirations += e.expirations;
    ++calls;
  });
  EXPECT_EQ(t.info().type, aem::EventType::timer);
  EXPECT_TRUE(dispatch_until(ctx, [&] { return expirations >= 5; }));
  EXPECT_GE(std::chrono::steady_clock::now() - start, 2ms * 5);  // no expiry too early
  EXPECT_LE(static_cast<uint64_t>(calls), expirations);
  // Counted, never lost: the stats add up.
  const aem::EventStats s = t.stats();
  EXPECT_EQ(s.activations, s.pending + expirations);
}

TEST(CxxTimer, OneShotDelay) {
  AEM_REQ("AEM-3.6.3");
  aem::Context ctx = fresh();
  int calls = 0;
  std::error_code ec = make_error_code(std::errc::io_error);
  aem::Registration t = ctx.timer(1ms, [&](const aem::TimerEvent& e) {
    EXPECT_EQ(e.expirations, 1u);
    ++calls;
  }, {}, ec);
  EXPECT_FALSE(ec);
  EXPECT_TRUE(dispatch_until(ctx, [&] { return calls == 1; }));
  EXPECT_EQ(ctx.dispatch(20ms), 0u);  // one-shot: nothing more
  EXPECT_EQ(calls, 1);
  // Period zero is one-shot too, also with the three-argument overloads.
  aem::Registration z = ctx.timer(0ns, 0ns, [&](const aem::TimerEvent&) { ++calls; }, ec);
  EXPECT_FALSE(ec);
  EXPECT_TRUE(dispatch_until(ctx, [&] { return calls == 2; }));
}

TEST(CxxTimer, AbsoluteSteadyAndSystemClock) {
  AEM_REQ("AEM-3.6.3");
  aem::Context ctx = fresh();
  const auto at = std::chrono::steady_clock::now() + 5ms;
  std::chrono::steady_clock::time_point fired{};
  aem::Registration a = ctx.timer(at, 0ns, [&](const aem::TimerEvent&) {
    fired = std::chrono::steady_clock::now();
  });
  EXPECT_TRUE(dispatch_until(ctx, [&] { return fired != std::chrono::steady_clock::time_point{}; }));
  EXPECT_GE(fired, at);

  const auto wall = std::chrono::system_clock::now() + 5ms;
  std::chrono::system_clock::time_point wall_fired{};
  std::error_code ec = make_error_code(std::errc::io_error);
  aem::Registration b = ctx.timer(wall, 0ns, [&](const aem::TimerEvent&) {
    wall_fired = std::chrono::system_clock::now();
  }, {}, ec);
  EXPECT_FALSE(ec);
  EXPECT_TRUE(dispatch_until(ctx, [&] { return wall_fired != std::chrono::system_clock::time_point{}; }));
  EXPECT_GE(wall_fired, wall);
  // A time in the past expires at once.
  int past = 0;
  aem::Registration c = ctx.timer(std::chrono::steady_clock::now() - 1s, 0ns,
                                  [&](const aem::TimerEvent&) { ++past; });
  EXPECT_TRUE(dispatch_until(ctx, [&] { return past == 1; }));
}

TEST(CxxTimer, InvalidTimes) {
  AEM_REQ("AEM-3.6.3", "AEM-3.5.2");
  aem::Context ctx = fresh();
  auto h = [](const aem::TimerEvent&) {};
  EXPECT_EQ(thrown_code([&] { ctx.timer(-1ms, 1ms, h); }), std::errc::invalid_argument);
  EXPECT_EQ(thrown_code([&] { ctx.timer(1ms, -1ms, h); }), std::errc::invalid_argument);
  std::error_code ec;
  EXPECT_FALSE(ctx.timer(-1s, h, {}, ec));
  EXPECT_EQ(ec, std::errc::invalid_argument);
  EXPECT_FALSE(ctx.timer(std::chrono::steady_clock::time_point(-1s), 0ns, h, {}, ec));
  EXPECT_EQ(ec, std::errc::invalid_argument);
  EXPECT_EQ(thrown_code([&] { ctx.timer(std::chrono::system_clock::time_point(-1s), 0ns, h); }),
            std::errc::invalid_argument);
}

TEST(CxxTimer, ExecutorThreadTimer) {
  AEM_REQ("AEM-3.6.3", "AEM-3.1.6");
  aem::Context ctx = fresh();
  std::atomic<uint64_t> n{0};
  aem::Registration t = ctx.timer(1ms, 1ms, [&](const aem::TimerEvent& e) { n += e.expirations; },
                                  {.executor = aem::Executor::thread});
  const auto end = std::chrono::steady_clock::now() + kBound;
  while (n.load() < 3 && std::chrono::steady_clock::now() < end) {
  }
  EXPECT_GE(n.load(), 3u);
  t.reset();
}

// ---------------------------------------------------------------------------
// Sockets.

TEST(CxxSocket, ReadDataThroughSpanThenEof) {
  AEM_REQ("AEM-3.1.2", "AEM-3.4.1", "AEM-3.6.5");
  aem::Context ctx = fresh();
  Pair p = socket_pair();
  std::string got1, got2;
  int eof1 = 0, eof2 = 0;
  aem::Registration r1 = ctx.read(p.a, [&](const aem::ReadEvent& e) {
    EXPECT_EQ(e.fd, p.a.fd);
    if (e.eof()) {
      ++eof1;
      return;
    }
    for (std::byte b : e.data) got1.push_back(static_cast<char>(b));
  });
  std::error_code ec = make_error_code(std::errc::io_error);
  aem::Registration r2 = ctx.read(p.a, [&](const aem::ReadEvent& e) {
    if (e.eof())
      ++eof2;
    else
      got2 += e.text();
  }, ec);
  EXPECT_FALSE(ec);
  const std::string msg = "hello, carrier grade";
  ASSERT_EQ(write(p.b, msg.data(), msg.size()), static_cast<ssize_t>(msg.size()));
  EXPECT_TRUE(dispatch_until(ctx, [&] { return got1.size() == msg.size() && got2.size() == msg.size(); }));
  p.b.reset();
  EXPECT_TRUE(dispatch_until(ctx, [&] { return eof1 == 1 && eof2 == 1; }));
  EXPECT_EQ(got1, msg);
  EXPECT_EQ(got2, msg);
}

TEST(CxxSocket, ReadErrors) {
  AEM_REQ("AEM-3.5.2", "AEM-3.1.1");
  aem::Context ctx = fresh();
  auto h = [](const aem::ReadEvent&) {};
  int pp[2];
  ASSERT_EQ(pipe(pp), 0);
  Fd r(pp[0]), w(pp[1]);
  EXPECT_EQ(thrown_code([&] { ctx.read(r, h); }), std::errc::not_a_socket);
  std::error_code ec;
  EXPECT_FALSE(ctx.read(-1, h, ec));
  EXPECT_EQ(ec, std::errc::bad_file_descriptor);
  EXPECT_FALSE(ctx.close(r, [](const aem::CloseEvent&) {}, ec));
  EXPECT_EQ(ec, std::errc::not_a_socket);
  EXPECT_EQ(thrown_code([&] { ctx.socket_state(-1, [](const aem::SocketStateEvent&) {}); }),
            std::errc::bad_file_descriptor);
}

TEST(CxxSocket, AcceptGivesFdAndPeer) {
  AEM_REQ("AEM-3.1.2", "AEM-3.4.1");
  aem::Context ctx = fresh();
  uint16_t port = 0;
  Fd l = tcp_listener(port);
  std::vector<aem::AcceptEvent> got;
  aem::Registration r = ctx.accept(l, [&](const aem::AcceptEvent& e) { got.push_back(e); });
  Fd c1 = tcp_connect(port);
  Fd c2 = tcp_connect(port);
  EXPECT_TRUE(dispatch_until(ctx, [&] { return got.size() == 2; }));
  ASSERT_EQ(got.size(), 2u);
  std::vector<uint16_t> peers;
  for (const auto& e : got) {
    EXPECT_EQ(e.id, r.id());
    EXPECT_EQ(e.listen_fd, l.fd);
    EXPECT_GE(e.fd, 0);
    EXPECT_EQ(e.peer.family(), AF_INET);
    EXPECT_EQ(e.peer.size, static_cast<socklen_t>(sizeof(sockaddr_in)));
    const auto* in = reinterpret_cast<const sockaddr_in*>(e.peer.data());
    EXPECT_EQ(ntohl(in->sin_addr.s_addr), INADDR_LOOPBACK);
    peers.push_back(ntohs(in->sin_port));
    ::close(e.fd);  // the application owns it
  }
  std::sort(peers.begin(), peers.end());
  std::vector<uint16_t> want = {local_port(c1), local_port(c2)};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(peers, want);
}

TEST(CxxSocket, AcceptErrors) {
  AEM_REQ("AEM-3.5.2");
  aem::Context ctx = fresh();
  auto h = [](const aem::AcceptEvent&) {};
  Fd s(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));  // not listening
  EXPECT_EQ(thrown_code([&] { ctx.accept(s, h); }), std::errc::invalid_argument);
  std::error_code ec;
  EXPECT_FALSE(ctx.accept(-1, h, ec));
  EXPECT_EQ(ec, std::errc::bad_file_descriptor);
}

TEST(CxxSocket, CloseDeliveredOnce) {
  AEM_REQ("AEM-3.1.2");
  aem::Context ctx = fresh();
  Pair p = socket_pair();
  int closes = 0;
  std::error_code ec = make_error_code(std::errc::io_error);
  aem::Registration r = ctx.close(p.a, [&](const aem::CloseEvent& e) {
    EXPECT_EQ(e.fd, p.a.fd);
    ++closes;
  }, ec);
  EXPECT_FALSE(ec);
  p.b.reset();
  EXPECT_TRUE(dispatch_until(ctx, [&] { return closes == 1; }));
  EXPECT_EQ(ctx.dispatch(20ms), 0u);
  EXPECT_EQ(closes, 1);
}

TEST(CxxSocket, TcpStateTransitions) {
  AEM_REQ("AEM-3.1.2");
  aem::Context ctx = fresh();
  uint16_t port = 0;
  Fd l = tcp_listener(port);
  Fd c = tcp_connect(port);
  Fd s(::accept4(l, nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_GE(s.fd, 0);
  std::vector<std::pair<int, int>> seen;
  aem::Registration r = ctx.tcp_state(s, [&](const aem::TcpStateEvent& e) {
    seen.emplace_back(e.old_state, e.new_state);
  });
  c.reset();  // the peer closes: ESTABLISHED -> CLOSE_WAIT
  EXPECT_TRUE(dispatch_until(ctx, [&] { return !seen.empty(); }));
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.front().first, TCP_ESTABLISHED);
  EXPECT_EQ(seen.front().second, TCP_CLOSE_WAIT);
  // Errors: not TCP, both overloads; filter bits outside the TCP states.
  Pair p = socket_pair();
  EXPECT_EQ(thrown_code([&] { ctx.tcp_state(p.a, [](const aem::TcpStateEvent&) {}); }),
            std::errc::operation_not_supported);
  std::error_code ec;
  EXPECT_FALSE(ctx.tcp_state(p.a, [](const aem::TcpStateEvent&) {}, ec));
  EXPECT_EQ(ec, std::errc::operation_not_supported);
  r.filter(1u << TCP_CLOSE);
  r.filter(1u, ec);
  EXPECT_EQ(ec, std::errc::invalid_argument);
}

TEST(CxxSocket, SocketStateAndFilter) {
  AEM_REQ("AEM-3.1.2", "AEM-3.1.7");
  aem::Context ctx = fresh();
  Pair p = socket_pair();
  unsigned seen = 0;
  aem::Registration r = ctx.socket_state(p.a, [&](const aem::SocketStateEvent& e) {
    EXPECT_EQ(e.fd, p.a.fd);
    seen |= e.events;
  }, {.trigger = aem::Trigger::edge});
  EXPECT_TRUE(dispatch_until(ctx, [&] { return (seen & POLLOUT) != 0; }));  // writable at once
  r.filter(POLLIN);
  seen = 0;
  ASSERT_EQ(write(p.b, "x", 1), 1);
  EXPECT_TRUE(dispatch_until(ctx, [&] { return (seen & POLLIN) != 0; }));
  std::error_code ec = make_error_code(std::errc::io_error);
  aem::Registration lvl = ctx.socket_state(p.a, [](const aem::SocketStateEvent&) {}, ec);
  EXPECT_FALSE(ec);
}

// ---------------------------------------------------------------------------
// Any fd.

TEST(CxxFd, LevelAndEdgeOnEventfd) {
  AEM_REQ("AEM-3.1.2", "PRF.5.0");
  aem::Context ctx = fresh();
  Fd efd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  ASSERT_GE(efd.fd, 0);
  unsigned revents = 0;
  int level_calls = 0;
  // Level: called again while readable; the handler drains it on the 2nd call.
  aem::Registration lvl = ctx.fd(efd, POLLIN, [&](const aem::FdEvent& e) {
    revents |= e.revents;
    if (++level_calls == 2) {
      uint64_t v;
      (void)!::read(efd, &v, sizeof v);
    }
  });
  uint64_t one = 1;
  ASSERT_EQ(write(efd, &one, sizeof one), 8);
  EXPECT_TRUE(dispatch_until(ctx, [&] { return level_calls >= 2; }));
  EXPECT_TRUE(revents & POLLIN);
  EXPECT_EQ(ctx.dispatch(20ms), 0u);
  EXPECT_EQ(level_calls, 2);
  lvl.reset();

  Fd efd2(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  int edge_calls = 0;
  aem::Registration edge = ctx.fd(efd2, POLLIN, [&](const aem::FdEvent&) { ++edge_calls; },
                                  {.trigger = aem::Trigger::edge});
  ASSERT_EQ(write(efd2, &one, sizeof one), 8);
  EXPECT_TRUE(dispatch_until(ctx, [&] { return edge_calls == 1; }));
  EXPECT_EQ(ctx.dispatch(20ms), 0u);  // still readable, but no new arrival
  EXPECT_EQ(edge_calls, 1);
  ASSERT_EQ(write(efd2, &one, sizeof one), 8);
  EXPECT_TRUE(dispatch_until(ctx, [&] { return edge_calls == 2; }));
}

TEST(CxxFd, Errors) {
  AEM_REQ("AEM-3.5.2", "AEM-3.1.1");
  aem::Context ctx = fresh();
  auto h = [](const aem::FdEvent&) {};
  char path[] = "/tmp/aem_cxx_XXXXXX";
  Fd file(mkstemp(path));
  ASSERT_GE(file.fd, 0);
  unlink(path);
  EXPECT_EQ(thrown_code([&] { ctx.fd(file, POLLIN, h); }), std::errc::operation_not_permitted);
  std::error_code ec;
  EXPECT_FALSE(ctx.fd(-1, POLLIN, h, ec));
  EXPECT_EQ(ec, std::errc::bad_file_descriptor);
  Fd efd(eventfd(0, EFD_CLOEXEC));
  EXPECT_FALSE(ctx.fd(efd, 0, h, ec));
  EXPECT_EQ(ec, std::errc::invalid_argument);
  EXPECT_EQ(thrown_code([&] { ctx.fd(efd, 0x80000000u, h); }), std::errc::invalid_argument);
  EXPECT_TRUE(ctx.fd(efd, POLLIN, h, ec));
  EXPECT_FALSE(ec);
}
