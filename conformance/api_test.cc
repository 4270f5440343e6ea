// Conformance: the API requirements AEM-3.1.1 .. AEM-3.1.7 (registration,
// handlers, existence of handlers, identifiers, priority at registration,
// executor agents, the control call). One test per acceptance criterion,
// named AEM_3_1_x.cN_...; negative tests check the documented errno.
#include <map>
#include <set>
#include <system_error>
#include <thread>
#include <tuple>
#include <unordered_set>
#include <vector>

#include "conformance_util.hpp"

namespace {
using namespace conf;

const int kClosedFd = 1 << 20;  // above RLIMIT_NOFILE: never an open fd

// ===========================================================================
// AEM-3.1.1 Event registration

class AEM_3_1_1 : public ConformanceTest {};

TEST_F(AEM_3_1_1, c1_EveryFamilyReturnsAPositiveId) {
  AEM_REQ("AEM-3.1.1");
  Pipe p;
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  Fd l = tcp_listener();
  ASSERT_TRUE(l);
  timespec v{10, 0};
  sockaddr_in addr{};
  socklen_t alen = sizeof addr;
  struct {
    const char* name;
    int id;
  } regs[] = {
      {"sockasync_accept",
       sockasync_accept(l.get(), reinterpret_cast<sockaddr*>(&addr), &alen, 0, noop_accept)},
      {"sockasync_read", sockasync_read(tp.server.get(), 0, noop_read)},
      {"sockasync_close", sockasync_close(tp.server.get(), 0, noop_close)},
      {"sockasync_sk", sockasync_sk(tp.server.get(), 0, noop_sk)},
      {"sockasync_sock", sockasync_sock(tp.server.get(), AEM_EDGE, noop_sock)},
      {"evtimer", evtimer(&v, nullptr, 0, noop_timer)},
      {"evfd", evfd(p.rd.get(), POLLIN, 0, noop_fd)},
      {"evsoft", evsoft(0, noop_soft)},
  };
  for (auto& r : regs) EXPECT_GT(r.id, 0) << r.name;
}

int g_bad_calls;
int g_sentinel_calls;

TEST_F(AEM_3_1_1, c2_FailedRegistrationReturnsNegativeErrnoAndNeverCalls) {
  AEM_REQ("AEM-3.1.1");
  g_bad_calls = 0;
  g_sentinel_calls = 0;
  auto bad_fd = [](int, int, unsigned) { ++g_bad_calls; };
  auto bad_read = [](int, int, const void*, size_t) { ++g_bad_calls; };
  Pipe p;
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  // Closed fds: -EBADF. The context exists first, so that it does not
  // take the closed number for its own fds.
  ASSERT_NE(aem_backend(), nullptr);
  const int closed_rd = dup(p.rd.get());
  ASSERT_GE(closed_rd, 0);
  close(closed_rd);
  EXPECT_AEM_ERR(evfd(closed_rd, POLLIN, 0, bad_fd), EBADF);
  EXPECT_AEM_ERR(evfd(kClosedFd, POLLIN, 0, bad_fd), EBADF);
  EXPECT_AEM_ERR(sockasync_read(kClosedFd, 0, bad_read), EBADF);
  // A flag bit outside AEM_FLAGS_VALID: -EINVAL, for every family.
  const unsigned long bad_bit = 0x400u;
  ASSERT_EQ(bad_bit & AEM_FLAGS_VALID, 0u);
  Fd l = tcp_listener();
  timespec v{0, 1000000};
  EXPECT_AEM_ERR(evfd(p.rd.get(), POLLIN, bad_bit, bad_fd), EINVAL);
  EXPECT_AEM_ERR(evfd(p.rd.get(), POLLIN, 1ul << 31, bad_fd), EINVAL);
  EXPECT_AEM_ERR(sockasync_read(tp.server.get(), bad_bit, bad_read), EINVAL);
  EXPECT_AEM_ERR(sockasync_accept(l.get(), nullptr, nullptr, bad_bit, noop_accept), EINVAL);
  EXPECT_AEM_ERR(sockasync_close(tp.server.get(), bad_bit, noop_close), EINVAL);
  EXPECT_AEM_ERR(sockasync_sk(tp.server.get(), bad_bit, noop_sk), EINVAL);
  EXPECT_AEM_ERR(sockasync_sock(tp.server.get(), bad_bit, noop_sock), EINVAL);
  EXPECT_AEM_ERR(evtimer(&v, nullptr, static_cast<unsigned>(bad_bit), noop_timer), EINVAL);
  EXPECT_AEM_ERR(evsoft(bad_bit, noop_soft), EINVAL);
  // Activate the sources: a valid sentinel on each proves the activation
  // was processed; the refused handlers were never called.
  ASSERT_GT(evfd(p.rd.get(), POLLIN, AEM_EDGE, [](int, int, unsigned) { ++g_sentinel_calls; }), 0);
  ASSERT_GT(sockasync_read(tp.server.get(), 0,
                           [](int, int, const void*, size_t len) {
                             if (len) ++g_sentinel_calls;
                           }),
            0);
  ASSERT_TRUE(write_all(p.wr.get(), "x", 1));
  ASSERT_TRUE(write_all(tp.client.get(), "y", 1));
  ASSERT_TRUE(dispatch_until([] { return g_sentinel_calls >= 2; }));
  while (aem_dispatch(0) > 0) {
  }
  EXPECT_EQ(g_bad_calls, 0);
}

std::vector<std::pair<int, unsigned>> g_fd_calls;  // (jid, revents)
void rec_fd(int jid, int, unsigned rev) { g_fd_calls.emplace_back(jid, rev); }
std::vector<int> g_other_calls;
void rec_fd_other(int jid, int, unsigned) { g_other_calls.push_back(jid); }

TEST_F(AEM_3_1_1, c3_SameSourceTwiceSameHandlerEachIdCalledOnce) {
  AEM_REQ("AEM-3.1.1");
  g_fd_calls.clear();
  Pipe p;
  const unsigned long fl = AEM_EDGE | AEM_PRIO(40);
  int a = evfd(p.rd.get(), POLLIN, fl, rec_fd);
  int b = evfd(p.rd.get(), POLLIN, fl, rec_fd);
  ASSERT_GT(a, 0);
  ASSERT_GT(b, 0);
  EXPECT_NE(a, b);
  ASSERT_TRUE(write_all(p.wr.get(), "x", 1));  // one activation of the source
  ASSERT_TRUE(dispatch_until([] { return g_fd_calls.size() >= 2; }));
  while (aem_dispatch(0) > 0) {
  }
  std::multiset<int> got;
  for (auto& c : g_fd_calls) got.insert(c.first);
  EXPECT_EQ(got, (std::multiset<int>{a, b})) << "each id once, with that id as jid";
}

TEST_F(AEM_3_1_1, c4_SameSourceTwoHandlersBothCalledWithTheirIds) {
  AEM_REQ("AEM-3.1.1");
  g_fd_calls.clear();
  g_other_calls.clear();
  Pipe p;
  int a = evfd(p.rd.get(), POLLIN, AEM_EDGE, rec_fd);
  int b = evfd(p.rd.get(), POLLIN, AEM_EDGE, rec_fd_other);
  ASSERT_GT(a, 0);
  ASSERT_GT(b, 0);
  EXPECT_NE(a, b);
  ASSERT_TRUE(write_all(p.wr.get(), "x", 1));
  ASSERT_TRUE(dispatch_until([] { return !g_fd_calls.empty() && !g_other_calls.empty(); }));
  while (aem_dispatch(0) > 0) {
  }
  ASSERT_EQ(g_fd_calls.size(), 1u);
  ASSERT_EQ(g_other_calls.size(), 1u);
  EXPECT_EQ(g_fd_calls[0].first, a);
  EXPECT_EQ(g_other_calls[0], b);
}

// ===========================================================================
// AEM-3.1.2 Handlers API

class AEM_3_1_2 : public ConformanceTest {};

// family -> jids its handler was called with
std::vector<std::pair<std::string, int>> g_jids;
void note(const char* fam, int jid) { g_jids.emplace_back(fam, jid); }
bool seen_family(const char* fam) {
  for (auto& [f, j] : g_jids)
    if (f == fam) return true;
  return false;
}

TEST_F(AEM_3_1_2, c1_FirstParameterIsTheRegistrationId) {
  AEM_REQ("AEM-3.1.2");
  g_jids.clear();
  Pipe p;
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  Fd l = tcp_listener();
  ASSERT_TRUE(l);
  timespec v{0, 1000000};
  ASSERT_EQ(aem_on_error([](int jid, int) { note("error", jid); }), 0);
  std::map<std::string, int> ids;
  ids["accept"] = sockasync_accept(l.get(), nullptr, nullptr, 0, [](int jid, int, int nfd) {
    note("accept", jid);
    close(nfd);
  });
  ids["read"] = sockasync_read(tp.server.get(), 0, [](int jid, int, const void*, size_t) { note("read", jid); });
  ids["close"] = sockasync_close(tp.server.get(), 0, [](int jid, int) { note("close", jid); });
  ids["sk"] = sockasync_sk(tp.server.get(), 0, [](int jid, int, int, int) { note("sk", jid); });
  ids["sock"] = sockasync_sock(tp.server.get(), AEM_EDGE, [](int jid, int, unsigned) { note("sock", jid); });
  ids["timer"] = evtimer(&v, nullptr, 0, [](int jid, uint64_t) { note("timer", jid); });
  ids["fd"] = evfd(p.rd.get(), POLLIN, AEM_EDGE, [](int jid, int, unsigned) { note("fd", jid); });
  ids["soft"] = evsoft(0, [](int jid, uint64_t, uint64_t) { note("soft", jid); });
  ids["error"] = evsoft(0, noop_soft);  // never raised: times out
  for (auto& [f, id] : ids) ASSERT_GT(id, 0) << f;
  ASSERT_EQ(evctl(ids["error"], AEM_CTL_SET_TIMEOUT, 20), 0);
  // Activate every family.
  Fd c = tcp_connect(local_port(l.get()));
  ASSERT_TRUE(c);
  ASSERT_TRUE(write_all(p.wr.get(), "x", 1));
  ASSERT_EQ(evsoft_raise(ids["soft"], 1), 0);
  ASSERT_TRUE(write_all(tp.client.get(), "data", 4));
  tp.client.reset();  // read (EOF), close, sk (CLOSE_WAIT)
  ASSERT_TRUE(dispatch_until([] {
    for (const char* f : {"accept", "read", "close", "sk", "sock", "timer", "fd", "soft", "error"})
      if (!seen_family(f)) return false;
    return true;
  })) << "not every family was delivered";
  for (auto& [f, jid] : g_jids) EXPECT_EQ(jid, ids[f]) << "family " << f;
}

sockaddr_in g_addr;
socklen_t g_addrlen;
struct AcceptSeen {
  int lfd = -1, nfd = -1, peer_rc = -1;
  uint16_t peer_port = 0, addr_port = 0;
  in_addr_t addr_ip = 0;
  socklen_t addrlen = 0;
  bool done = false;
} g_acc;

TEST_F(AEM_3_1_2, c2_AcceptGetsConnectedFdAndPeerAddress) {
  AEM_REQ("AEM-3.1.2");
  g_acc = AcceptSeen{};
  memset(&g_addr, 0, sizeof g_addr);
  g_addrlen = sizeof g_addr;
  Fd l = tcp_listener();
  ASSERT_TRUE(l);
  int id = sockasync_accept(l.get(), reinterpret_cast<sockaddr*>(&g_addr), &g_addrlen, 0,
                            [](int, int lfd, int nfd) {
                              g_acc.lfd = lfd;
                              g_acc.nfd = nfd;
                              sockaddr_in peer{};
                              socklen_t len = sizeof peer;
                              g_acc.peer_rc = getpeername(nfd, reinterpret_cast<sockaddr*>(&peer), &len);
                              g_acc.peer_port = ntohs(peer.sin_port);
                              g_acc.addr_port = ntohs(g_addr.sin_port);  // *addr when the handler runs
                              g_acc.addr_ip = g_addr.sin_addr.s_addr;
                              g_acc.addrlen = g_addrlen;
                              g_acc.done = true;
                              close(nfd);
                            });
  ASSERT_GT(id, 0);
  Fd c = tcp_connect(local_port(l.get()));
  ASSERT_TRUE(c);
  ASSERT_TRUE(dispatch_until([] { return g_acc.done; }));
  EXPECT_EQ(g_acc.lfd, l.get());
  EXPECT_GE(g_acc.nfd, 0);
  EXPECT_EQ(g_acc.peer_rc, 0) << "getpeername() on the new fd";
  EXPECT_EQ(g_acc.peer_port, local_port(c.get()));
  EXPECT_EQ(g_acc.addr_port, local_port(c.get())) << "*addr does not hold the peer's address";
  EXPECT_EQ(g_acc.addr_ip, htonl(INADDR_LOOPBACK));
  EXPECT_EQ(g_acc.addrlen, static_cast<socklen_t>(sizeof(sockaddr_in)));
}

struct ReadLog {
  std::string data;
  int eofs = 0;
  int after_eof = 0;
  int fd = -1;
} g_read;

void read_log(int, int fd, const void* d, size_t len) {
  if (g_read.eofs) ++g_read.after_eof;
  g_read.fd = fd;
  if (len == 0)
    ++g_read.eofs;
  else
    g_read.data.append(static_cast<const char*>(d), len);
}

// Writes total pattern bytes in uneven pieces, then closes fd.
std::thread pattern_writer(Fd& fd, uint64_t total) {
  return std::thread([&fd, total] {
    uint64_t off = 0;
    size_t piece = 1;
    while (off < total) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(piece, total - off));
      std::string b = pattern_bytes(off, n);
      if (!write_all(fd.get(), b.data(), n)) break;
      off += n;
      piece = piece * 7 % 65521 + 1;
    }
    fd.reset();
  });
}

TEST_F(AEM_3_1_2, c3_ReadDataInOrderThenOneEof) {
  AEM_REQ("AEM-3.1.2");
  g_read = ReadLog{};
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  ASSERT_GT(sockasync_read(tp.server.get(), 0, read_log), 0);
  constexpr uint64_t kTotal = 1 << 20;
  std::thread w = pattern_writer(tp.client, kTotal);
  bool done = dispatch_until([] { return g_read.eofs > 0; }, 60000);
  w.join();
  ASSERT_TRUE(done);
  while (aem_dispatch(0) > 0) {
  }
  EXPECT_EQ(g_read.fd, tp.server.get());
  ASSERT_EQ(g_read.data.size(), kTotal);
  EXPECT_TRUE(g_read.data == pattern_bytes(0, kTotal)) << "bytes out of order or changed";
  EXPECT_EQ(g_read.eofs, 1);
  EXPECT_EQ(g_read.after_eof, 0);
  measure("bytes", kTotal);
}

TEST_F(AEM_3_1_2, c4_TimerFdSockAndSoftParameters) {
  AEM_REQ("AEM-3.1.2");
  static uint64_t exps;
  static std::vector<unsigned> fd_rev, sock_rev;
  static uint64_t soft_value, soft_occ;
  exps = 0;
  fd_rev.clear();
  sock_rev.clear();
  soft_value = soft_occ = 0;
  Pipe p;
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  timespec v{0, 1000000}, per{0, 1000000};
  static uint64_t min_exp;
  min_exp = UINT64_MAX;
  int t = evtimer(&v, &per, 0, [](int, uint64_t e) {
    exps += e;
    min_exp = std::min(min_exp, e);
  });
  int f = evfd(p.rd.get(), POLLIN, AEM_EDGE, [](int, int, unsigned r) { fd_rev.push_back(r); });
  int s = sockasync_sock(tp.server.get(), AEM_EDGE, [](int, int, unsigned r) { sock_rev.push_back(r); });
  int so = evsoft(0, [](int, uint64_t val, uint64_t occ) {
    soft_value = val;
    soft_occ += occ;
  });
  for (int id : {t, f, s, so}) ASSERT_GT(id, 0);
  ASSERT_EQ(evctl(s, AEM_CTL_FILTER, POLLIN), 0);
  // The socket was writable when registered: that POLLOUT occurrence may be
  // pending already and keeps its mask (AEM_CTL_FILTER applies from the call
  // on, aem.h). Deliver what is pending, then look only at what follows.
  while (aem_dispatch(0) > 0) {
  }
  fd_rev.clear();
  sock_rev.clear();
  ASSERT_TRUE(write_all(p.wr.get(), "x", 1));
  ASSERT_TRUE(write_all(tp.client.get(), "y", 1));
  ASSERT_EQ(evsoft_raise(so, 0x1234567890abcdefull), 0);
  ASSERT_EQ(evsoft_raise(so, 0x55), 0);
  ASSERT_TRUE(dispatch_until([] { return exps >= 5 && !fd_rev.empty() && !sock_rev.empty() && soft_occ >= 2; }));
  EXPECT_GE(min_exp, 1u) << "a timer handler call with 0 expirations";
  for (unsigned r : fd_rev) EXPECT_TRUE(r & (POLLIN | POLLERR | POLLHUP)) << std::hex << r;
  for (unsigned r : sock_rev) EXPECT_TRUE(r & (POLLIN | POLLERR | POLLHUP)) << std::hex << r;
  EXPECT_EQ(soft_value, 0x55u) << "the value of the latest raise";
  EXPECT_EQ(soft_occ, 2u);
}

TEST_F(AEM_3_1_2, c4_SkStatesChainFromOneCallToTheNext) {
  AEM_REQ("AEM-3.1.2");
  static std::vector<std::pair<int, int>> tr;
  tr.clear();
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  ASSERT_GT(sockasync_sk(tp.server.get(), 0, [](int, int, int o, int n) { tr.emplace_back(o, n); }), 0);
  tp.client.reset();  // server: ESTABLISHED -> CLOSE_WAIT
  ASSERT_TRUE(dispatch_until([] { return !tr.empty(); }));
  ASSERT_EQ(shutdown(tp.server.get(), SHUT_WR), 0);  // -> LAST_ACK -> CLOSE
  ASSERT_TRUE(dispatch_until([] { return !tr.empty() && tr.back().second == TCP_CLOSE; }));
  EXPECT_EQ(tr.front().first, TCP_ESTABLISHED);
  for (size_t i = 0; i < tr.size(); ++i) {
    EXPECT_GE(tr[i].first, TCP_ESTABLISHED);
    EXPECT_LE(tr[i].first, TCP_CLOSING);
    EXPECT_GE(tr[i].second, TCP_ESTABLISHED);
    EXPECT_LE(tr[i].second, TCP_CLOSING);
    EXPECT_NE(tr[i].first, tr[i].second);
    if (i) {
      EXPECT_EQ(tr[i].first, tr[i - 1].second) << "call " << i << " does not chain";
    }
  }
  measure("transitions", static_cast<uint64_t>(tr.size()));
}

TEST_F(AEM_3_1_2, c5_CloseCalledOnceWithTheFdOnPeerClose) {
  AEM_REQ("AEM-3.1.2");
  static std::vector<std::pair<int, int>> closes;
  static int sentinel;
  closes.clear();
  sentinel = 0;
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  int id = sockasync_close(tp.server.get(), 0, [](int jid, int fd) { closes.emplace_back(jid, fd); });
  ASSERT_GT(id, 0);
  ASSERT_GT(sockasync_read(tp.server.get(), 0,
                           [](int, int, const void*, size_t len) {
                             if (!len) ++sentinel;
                           }),
            0);
  tp.client.reset();
  ASSERT_TRUE(dispatch_until([] { return !closes.empty() && sentinel; }));
  while (aem_dispatch(0) > 0) {
  }
  ASSERT_EQ(closes.size(), 1u);
  EXPECT_EQ(closes[0].first, id);
  EXPECT_EQ(closes[0].second, tp.server.get());
}

// ===========================================================================
// AEM-3.1.3 Existence of handlers

class AEM_3_1_3 : public ConformanceTest {};

TEST_F(AEM_3_1_3, c1_NullHandlerRefusedByEveryFamily) {
  AEM_REQ("AEM-3.1.3");
  Pipe p;
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  Fd l = tcp_listener();
  timespec v{1, 0};
  EXPECT_AEM_ERR(sockasync_accept(l.get(), nullptr, nullptr, 0, nullptr), EINVAL);
  EXPECT_AEM_ERR(sockasync_read(tp.server.get(), 0, nullptr), EINVAL);
  EXPECT_AEM_ERR(sockasync_close(tp.server.get(), 0, nullptr), EINVAL);
  EXPECT_AEM_ERR(sockasync_sk(tp.server.get(), 0, nullptr), EINVAL);
  EXPECT_AEM_ERR(sockasync_sock(tp.server.get(), 0, nullptr), EINVAL);
  EXPECT_AEM_ERR(evtimer(&v, nullptr, 0, nullptr), EINVAL);
  EXPECT_AEM_ERR(evfd(p.rd.get(), POLLIN, 0, nullptr), EINVAL);
  EXPECT_AEM_ERR(evsoft(0, nullptr), EINVAL);
}

TEST_F(AEM_3_1_3, c2_ActivatingARefusedSourceCallsNothing) {
  AEM_REQ("AEM-3.1.3");
  static int sentinels;
  sentinels = 0;
  Pipe p;
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  Fd l = tcp_listener();
  ASSERT_TRUE(l);
  timespec v{0, 2000000};
  ASSERT_LT(sockasync_accept(l.get(), nullptr, nullptr, 0, nullptr), 0);
  ASSERT_LT(sockasync_read(tp.server.get(), 0, nullptr), 0);
  ASSERT_LT(evtimer(&v, nullptr, 0, nullptr), 0);
  ASSERT_LT(evfd(p.rd.get(), POLLIN, 0, nullptr), 0);
  const int soft = evsoft(0, nullptr);
  ASSERT_LT(soft, 0);
  EXPECT_LT(evsoft_raise(soft, 1), 0) << "the error value is not an id";
  // Sentinels on the same sources prove each activation was processed.
  ASSERT_GT(sockasync_accept(l.get(), nullptr, nullptr, 0,
                             [](int, int, int nfd) {
                               close(nfd);
                               ++sentinels;
                             }),
            0);
  ASSERT_GT(sockasync_read(tp.server.get(), 0,
                           [](int, int, const void*, size_t n) {
                             if (n) ++sentinels;
                           }),
            0);
  ASSERT_GT(evtimer(&v, nullptr, 0, [](int, uint64_t) { ++sentinels; }), 0);
  ASSERT_GT(evfd(p.rd.get(), POLLIN, AEM_EDGE, [](int, int, unsigned) { ++sentinels; }), 0);
  Fd c = tcp_connect(local_port(l.get()));
  ASSERT_TRUE(c);
  ASSERT_TRUE(write_all(tp.client.get(), "x", 1));
  ASSERT_TRUE(write_all(p.wr.get(), "x", 1));
  ASSERT_TRUE(dispatch_until([] { return sentinels >= 4; }));
  while (aem_dispatch(0) > 0) {
  }
  EXPECT_EQ(sentinels, 4) << "something other than the sentinels ran";
}

TEST_F(AEM_3_1_3, c3_CxxApiRefusesAnEmptyCallable) {
  AEM_REQ("AEM-3.1.3");
  aem::Context ctx = aem::Context::process();
  std::error_code ec;
  aem::SoftEvent s = ctx.soft(aem::Handler<aem::SoftRaised>{}, ec);
  EXPECT_EQ(ec, std::errc::invalid_argument);
  EXPECT_FALSE(s);
  ec.clear();
  aem::Registration t = ctx.timer(std::chrono::milliseconds(5), aem::Handler<aem::TimerEvent>{}, {}, ec);
  EXPECT_EQ(ec, std::errc::invalid_argument);
  EXPECT_FALSE(t);
  Pipe p;
  ec.clear();
  aem::Registration f = ctx.fd(p.rd.get(), POLLIN, aem::Handler<aem::FdEvent>{}, ec);
  EXPECT_EQ(ec, std::errc::invalid_argument);
  std::error_code thrown;
  try {
    (void)ctx.soft(aem::Handler<aem::SoftRaised>{});
  } catch (const std::system_error& e) {
    thrown = e.code();
  } catch (const std::invalid_argument&) {
    thrown = std::make_error_code(std::errc::invalid_argument);
  }
  EXPECT_EQ(thrown, std::errc::invalid_argument) << "the throwing overload did not refuse it";
}

// ===========================================================================
// AEM-3.1.4 Event identifier

class AEM_3_1_4 : public ConformanceTest {};

TEST_F(AEM_3_1_4, c1_EverySuccessfulRegistrationIdIsPositive) {
  AEM_REQ("AEM-3.1.4");
  Pipe p;
  timespec v{10, 0};
  for (int i = 0; i < 300; ++i) {
    int a = evsoft(i % 2 ? AEM_PER_OCCURRENCE : 0, noop_soft);
    int b = evtimer(&v, nullptr, 0, noop_timer);
    int c = evfd(p.rd.get(), POLLIN, 0, noop_fd);
    ASSERT_GT(a, 0);
    ASSERT_GT(b, 0);
    ASSERT_GT(c, 0);
  }
}

TEST_F(AEM_3_1_4, c2_TenThousandLiveIdsAreDistinct) {
  AEM_REQ("AEM-3.1.4");
  std::unordered_set<int> ids;
  Pipe p;
  for (int i = 0; i < 10000; ++i) {
    int id = (i % 10 == 0) ? evfd(p.rd.get(), POLLIN, 0, noop_fd) : evsoft(0, noop_soft);
    ASSERT_GT(id, 0) << "registration " << i;
    ASSERT_TRUE(ids.insert(id).second) << "id " << id << " issued twice";
  }
  measure("live_ids", static_cast<uint64_t>(ids.size()));
}

TEST_F(AEM_3_1_4, c3_NoNewIdEqualsALiveOne) {
  AEM_REQ("AEM-3.1.4");
  std::unordered_set<int> live;
  std::vector<int> order;
  for (int i = 0; i < 200; ++i) {
    int id = evsoft(0, noop_soft);
    ASSERT_GT(id, 0);
    live.insert(id);
    order.push_back(id);
  }
  // Register, clean, re-register: clean the oldest, add one, many times.
  size_t head = 0;
  for (int i = 0; i < 5000; ++i) {
    if (i % 3 != 2) {
      int old = order[head++];
      ASSERT_EQ(evctl(old, AEM_CTL_CLEAN, 0), 0);
      live.erase(old);
    }
    int id = evsoft(0, noop_soft);
    ASSERT_GT(id, 0);
    ASSERT_TRUE(live.insert(id).second) << "id " << id << " is still live";
    order.push_back(id);
  }
}

TEST_F(AEM_3_1_4, c4_LookupDescribesTheRegistration) {
  AEM_REQ("AEM-3.1.4");
  Pipe p;
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  Fd l = tcp_listener();
  timespec v{10, 0};
  struct Case {
    int id, type, fd, prio, enabled;
  } cases[] = {
      {sockasync_accept(l.get(), nullptr, nullptr, AEM_PRIO(3), noop_accept), AEM_EV_ACCEPT, l.get(), 3, 1},
      {sockasync_read(tp.server.get(), AEM_DISABLED, noop_read), AEM_EV_READ, tp.server.get(), AEM_PRIO_DEFAULT, 0},
      {sockasync_close(tp.server.get(), AEM_PRIO(63), noop_close), AEM_EV_CLOSE, tp.server.get(), 63, 1},
      {sockasync_sk(tp.server.get(), 0, noop_sk), AEM_EV_SK, tp.server.get(), AEM_PRIO_DEFAULT, 1},
      {sockasync_sock(tp.server.get(), AEM_EDGE | AEM_DISABLED, noop_sock), AEM_EV_SOCK, tp.server.get(),
       AEM_PRIO_DEFAULT, 0},
      {evtimer(&v, nullptr, AEM_PRIO(0), noop_timer), AEM_EV_TIMER, -1, 0, 1},
      {evfd(p.rd.get(), POLLIN, AEM_PRIO(17), noop_fd), AEM_EV_FD, p.rd.get(), 17, 1},
      {evsoft(AEM_DISABLED | AEM_PRIO(50), noop_soft), AEM_EV_SOFT, -1, 50, 0},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.type);
    ASSERT_GT(c.id, 0);
    aem_event_info info{};
    info.jid = -7;
    ASSERT_GE(evctl(c.id, AEM_CTL_LOOKUP, ptr(&info)), 0);
    EXPECT_EQ(info.jid, c.id);
    EXPECT_EQ(info.type, c.type);
    EXPECT_EQ(info.fd, c.fd);
    EXPECT_EQ(info.prio, c.prio);
    EXPECT_EQ(info.enabled, c.enabled);
  }
}

TEST_F(AEM_3_1_4, c5_InvalidIdsFailForEveryOperation) {
  AEM_REQ("AEM-3.1.4");
  int live = evsoft(0, noop_soft);
  int cleaned = evsoft(0, noop_soft);
  ASSERT_GT(live, 0);
  ASSERT_GT(cleaned, 0);
  ASSERT_EQ(evctl(cleaned, AEM_CTL_CLEAN, 0), 0);
  aem_event_info info{};
  aem_event_stats st{};
  auto arg_for = [&](unsigned op) -> unsigned long {
    switch (op) {
      case AEM_CTL_FILTER: return POLLIN;
      case AEM_CTL_LOOKUP: return ptr(&info);
      case AEM_CTL_SET_TIMEOUT: return 100;
      case AEM_CTL_SET_PRIO: return 10;
      case AEM_CTL_STATS: return ptr(&st);
      default: return 0;
    }
  };
  const int never = live + 1000000;
  for (unsigned op = AEM_CTL_ENABLE; op <= AEM_CTL_MAX; ++op) {
    SCOPED_TRACE(op);
    EXPECT_AEM_ERR(evctl(0, op, arg_for(op)), EINVAL);
    EXPECT_AEM_ERR(evctl(-1, op, arg_for(op)), EINVAL);
    EXPECT_AEM_ERR(evctl(-100000, op, arg_for(op)), EINVAL);
    EXPECT_AEM_ERR(evctl(never, op, arg_for(op)), ENOENT);
    EXPECT_AEM_ERR(evctl(cleaned, op, arg_for(op)), ENOENT);
  }
  EXPECT_EQ(evctl(live, AEM_CTL_LOOKUP, ptr(&info)), 0) << "the live id was affected";
}

// ===========================================================================
// AEM-3.1.5 Event priority (registration API)

class AEM_3_1_5 : public ConformanceTest {};

int prio_of(int id) {
  aem_event_info info{};
  if (evctl(id, AEM_CTL_LOOKUP, ptr(&info)) < 0) return -1000;
  return info.prio;
}

TEST_F(AEM_3_1_5, c1_WithoutAPriorityTheDefaultApplies) {
  AEM_REQ("AEM-3.1.5");
  Pipe p;
  timespec v{10, 0};
  int ids[] = {evsoft(0, noop_soft), evtimer(&v, nullptr, 0, noop_timer), evfd(p.rd.get(), POLLIN, AEM_EDGE, noop_fd),
               evsoft(AEM_EXEC_THREAD | AEM_PER_OCCURRENCE, noop_soft)};
  for (int id : ids) {
    ASSERT_GT(id, 0);
    EXPECT_EQ(prio_of(id), AEM_PRIO_DEFAULT);
  }
}

TEST_F(AEM_3_1_5, c2_EveryPriorityFromMinToMaxIsKept) {
  AEM_REQ("AEM-3.1.5");
  for (int p = AEM_PRIO_MIN; p <= AEM_PRIO_MAX; ++p) {
    int id = evsoft(AEM_PRIO(p), noop_soft);
    ASSERT_GT(id, 0) << "priority " << p;
    EXPECT_EQ(prio_of(id), p);
  }
}

TEST_F(AEM_3_1_5, c3_OutOfRangePriorityRefusedAndCreatesNothing) {
  AEM_REQ("AEM-3.1.5");
  EXPECT_AEM_ERR(evsoft(AEM_PRIO(-1), noop_soft), EINVAL);
  EXPECT_AEM_ERR(evsoft(AEM_PRIO(AEM_PRIO_MAX + 1), noop_soft), EINVAL);
  EXPECT_AEM_ERR(evsoft(AEM_PRIO(1000), noop_soft), EINVAL);
  timespec v{1, 0};
  EXPECT_AEM_ERR(evtimer(&v, nullptr, AEM_PRIO(64), noop_timer), EINVAL);
  // No registration was created: with a limit of one registration, the
  // refused calls leave room for exactly one.
  ASSERT_EQ(aem_shutdown(), 0);
  EXPECT_CHILD_OK([] {
    setenv("AEM_MAX_REGISTRATIONS", "1", 1);
    for (int i = 0; i < 5; ++i) CHILD_CHECK(evsoft(AEM_PRIO(64 + i), noop_soft) == -EINVAL);
    CHILD_CHECK(evsoft(AEM_PRIO(-1), noop_soft) == -EINVAL);
    CHILD_CHECK(evsoft(AEM_PRIO(5), noop_soft) > 0);
    CHILD_CHECK(evsoft(AEM_PRIO(5), noop_soft) < 0);  // the limit holds
    return 0;
  });
}

TEST_F(AEM_3_1_5, c4_SetPrioChangesItOutOfRangeLeavesItUnchanged) {
  AEM_REQ("AEM-3.1.5");
  int id = evsoft(AEM_PRIO(20), noop_soft);
  ASSERT_GT(id, 0);
  for (int p : {AEM_PRIO_MIN, 7, AEM_PRIO_DEFAULT, AEM_PRIO_MAX, 33}) {
    EXPECT_GE(evctl(id, AEM_CTL_SET_PRIO, static_cast<unsigned long>(p)), 0);
    EXPECT_EQ(prio_of(id), p);
  }
  EXPECT_AEM_ERR(evctl(id, AEM_CTL_SET_PRIO, AEM_PRIO_MAX + 1), EINVAL);
  EXPECT_AEM_ERR(evctl(id, AEM_CTL_SET_PRIO, static_cast<unsigned long>(-1)), EINVAL);
  EXPECT_AEM_ERR(evctl(id, AEM_CTL_SET_PRIO, 1000), EINVAL);
  EXPECT_EQ(prio_of(id), 33) << "a refused SET_PRIO changed the priority";
}

TEST_F(AEM_3_1_5, c5_RegistrationsOfOneSourceKeepTheirOwnPriorities) {
  AEM_REQ("AEM-3.1.5");
  Pipe p;
  int a = evfd(p.rd.get(), POLLIN, AEM_PRIO(10), noop_fd);
  int b = evfd(p.rd.get(), POLLIN, AEM_PRIO(50), noop_fd);
  int c = evfd(p.rd.get(), POLLIN, 0, noop_fd);
  ASSERT_GT(a, 0);
  ASSERT_GT(b, 0);
  ASSERT_GT(c, 0);
  EXPECT_EQ(prio_of(a), 10);
  EXPECT_EQ(prio_of(b), 50);
  EXPECT_EQ(prio_of(c), AEM_PRIO_DEFAULT);
  ASSERT_EQ(evctl(a, AEM_CTL_SET_PRIO, 60), 0);
  EXPECT_EQ(prio_of(a), 60);
  EXPECT_EQ(prio_of(b), 50) << "changing one registration changed another of the same source";
  EXPECT_EQ(prio_of(c), AEM_PRIO_DEFAULT);
}

std::vector<int> g_order;
void rec_order(int jid, uint64_t, uint64_t) { g_order.push_back(jid); }

TEST_F(AEM_3_1_5, c6_HigherPriorityFirstAndSwappingSwapsTheOrder) {
  AEM_REQ("AEM-3.1.5");
  g_order.clear();
  int lo = evsoft(AEM_PRIO(10), rec_order);
  int hi = evsoft(AEM_PRIO(50), rec_order);
  ASSERT_GT(lo, 0);
  ASSERT_GT(hi, 0);
  ASSERT_EQ(evsoft_raise(lo, 0), 0);
  ASSERT_EQ(evsoft_raise(hi, 0), 0);
  ASSERT_EQ(aem_dispatch(0), 2);
  EXPECT_EQ(g_order, (std::vector<int>{hi, lo}));
  ASSERT_EQ(evctl(lo, AEM_CTL_SET_PRIO, 50), 0);
  ASSERT_EQ(evctl(hi, AEM_CTL_SET_PRIO, 10), 0);
  g_order.clear();
  ASSERT_EQ(evsoft_raise(hi, 0), 0);
  ASSERT_EQ(evsoft_raise(lo, 0), 0);
  ASSERT_EQ(aem_dispatch(0), 2);
  EXPECT_EQ(g_order, (std::vector<int>{lo, hi}));
  // Swapped while both are pending, too.
  g_order.clear();
  ASSERT_EQ(evsoft_raise(hi, 0), 0);
  ASSERT_EQ(evsoft_raise(lo, 0), 0);
  ASSERT_EQ(evctl(lo, AEM_CTL_SET_PRIO, 10), 0);
  ASSERT_EQ(evctl(hi, AEM_CTL_SET_PRIO, 50), 0);
  ASSERT_EQ(aem_dispatch(0), 2);
  EXPECT_EQ(g_order, (std::vector<int>{hi, lo}));
}

// ===========================================================================
// AEM-3.1.6 Executor agents

class AEM_3_1_6 : public ConformanceTest {};

TEST_F(AEM_3_1_6, c1_SameExecutorRunsInTheRegisteringThread) {
  AEM_REQ("AEM-3.1.6");
  static std::atomic<pid_t> ran_default, ran_same;
  ran_default = ran_same = 0;
  pid_t reg_tid = 0;
  int a = 0, b = 0;
  Pipe registered, go;
  std::thread t([&] {
    reg_tid = tid();
    a = evsoft(0, [](int, uint64_t, uint64_t) { ran_default = tid(); });
    b = evsoft(AEM_EXEC_SAME, [](int, uint64_t, uint64_t) { ran_same = tid(); });
    write_all(registered.wr.get(), "r", 1);
    char c;
    read_exact(go.rd.get(), &c, 1);
    dispatch_until([] { return ran_default.load() && ran_same.load(); });
  });
  char c;
  ASSERT_TRUE(read_exact(registered.rd.get(), &c, 1));
  ASSERT_GT(a, 0);
  ASSERT_GT(b, 0);
  ASSERT_EQ(evsoft_raise(a, 0), 0);  // raised from this thread
  ASSERT_EQ(evsoft_raise(b, 0), 0);
  EXPECT_EQ(aem_dispatch(0), 0) << "another thread's handler ran here";
  ASSERT_TRUE(write_all(go.wr.get(), "g", 1));
  t.join();
  EXPECT_EQ(ran_default.load(), reg_tid);
  EXPECT_EQ(ran_same.load(), reg_tid);
}

TEST_F(AEM_3_1_6, c2_ThreadExecutorRunsInTheProcessWithoutDispatch) {
  AEM_REQ("AEM-3.1.6");
  static std::atomic<pid_t> pid_in, tid_in;
  static Counter calls;
  pid_in = tid_in = 0;
  calls.reset();
  Pipe p;
  timespec v{0, 1000000};
  int s = evsoft(AEM_EXEC_THREAD, [](int, uint64_t, uint64_t) {
    pid_in = getpid();
    tid_in = tid();
    calls.add();
  });
  int t = evtimer(&v, nullptr, AEM_EXEC_THREAD, [](int, uint64_t) { calls.add(); });
  int f = evfd(p.rd.get(), POLLIN, AEM_EXEC_THREAD | AEM_EDGE, [](int, int, unsigned) { calls.add(); });
  ASSERT_GT(s, 0);
  ASSERT_GT(t, 0);
  ASSERT_GT(f, 0);
  ASSERT_EQ(evsoft_raise(s, 0), 0);
  ASSERT_TRUE(write_all(p.wr.get(), "x", 1));
  // This thread neither dispatches nor enters keepalive: it only waits.
  ASSERT_TRUE(calls.wait_for(3));
  EXPECT_EQ(pid_in.load(), getpid());
  EXPECT_NE(tid_in.load(), tid());
}

int g_child_mark;  // written by the handler in the child only

struct ProcReport {
  pid_t pid, ppid;
  uint64_t value;
  int mark;
};

TEST_F(AEM_3_1_6, c3_ProcessExecutorRunsEachActivationInANewProcess) {
  AEM_REQ("AEM-3.1.6");
  static Pipe rep;
  rep = Pipe();
  g_child_mark = 0;
  int id = evsoft(AEM_EXEC_PROCESS | AEM_PER_OCCURRENCE, [](int, uint64_t v, uint64_t) {
    g_child_mark = 4242;
    ProcReport r{getpid(), getppid(), v, g_child_mark};
    write_all(rep.wr.get(), &r, sizeof r);
  });
  ASSERT_GT(id, 0);
  std::set<pid_t> pids;
  for (uint64_t v = 1; v <= 3; ++v) {
    ASSERT_EQ(evsoft_raise(id, v), 0);
    ProcReport r{};
    ASSERT_TRUE(read_exact(rep.rd.get(), &r, sizeof r));
    EXPECT_NE(r.pid, getpid());
    EXPECT_EQ(r.ppid, getpid());
    EXPECT_EQ(r.value, v);
    EXPECT_EQ(r.mark, 4242);
    pids.insert(r.pid);
  }
  EXPECT_EQ(pids.size(), 3u) << "one new process per activation";
  EXPECT_EQ(g_child_mark, 0) << "memory written by the child is visible in the parent";
}

TEST_F(AEM_3_1_6, c4_ExecutorValueThreeRefused) {
  AEM_REQ("AEM-3.1.6");
  Pipe p;
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  Fd l = tcp_listener();
  timespec v{1, 0};
  EXPECT_AEM_ERR(evsoft(AEM_EXEC_MASK, noop_soft), EINVAL);
  EXPECT_AEM_ERR(evtimer(&v, nullptr, AEM_EXEC_MASK, noop_timer), EINVAL);
  EXPECT_AEM_ERR(evfd(p.rd.get(), POLLIN, AEM_EXEC_MASK, noop_fd), EINVAL);
  EXPECT_AEM_ERR(sockasync_read(tp.server.get(), AEM_EXEC_MASK, noop_read), EINVAL);
  EXPECT_AEM_ERR(sockasync_accept(l.get(), nullptr, nullptr, AEM_EXEC_MASK, noop_accept), EINVAL);
  EXPECT_AEM_ERR(sockasync_close(tp.server.get(), AEM_EXEC_MASK, noop_close), EINVAL);
  EXPECT_AEM_ERR(sockasync_sk(tp.server.get(), AEM_EXEC_MASK, noop_sk), EINVAL);
  EXPECT_AEM_ERR(sockasync_sock(tp.server.get(), AEM_EXEC_MASK, noop_sock), EINVAL);
}

TEST_F(AEM_3_1_6, c5_LookupReportsTheExecutor) {
  AEM_REQ("AEM-3.1.6");
  Pipe p;
  for (unsigned ex : {AEM_EXEC_SAME, AEM_EXEC_THREAD, AEM_EXEC_PROCESS}) {
    for (int id : {evsoft(ex, noop_soft), evfd(p.rd.get(), POLLIN, ex | AEM_DISABLED, noop_fd)}) {
      ASSERT_GT(id, 0);
      aem_event_info info{};
      ASSERT_EQ(evctl(id, AEM_CTL_LOOKUP, ptr(&info)), 0);
      EXPECT_EQ(info.flags & AEM_EXEC_MASK, ex);
      EXPECT_EQ(info.executor, static_cast<int>(ex));
    }
  }
}

// ===========================================================================
// AEM-3.1.7 Low level control API

class AEM_3_1_7 : public ConformanceTest {};

std::vector<std::tuple<int, uint64_t, uint64_t>> g_soft;  // (jid, value, occurrences)
void rec_soft(int jid, uint64_t v, uint64_t occ) { g_soft.emplace_back(jid, v, occ); }

TEST_F(AEM_3_1_7, c1_DisabledNotCalledUntilEnabled) {
  AEM_REQ("AEM-3.1.7");
  g_soft.clear();
  int a = evsoft(0, rec_soft);
  int b = evsoft(AEM_DISABLED, rec_soft);
  ASSERT_GT(a, 0);
  ASSERT_GT(b, 0);
  ASSERT_EQ(evctl(a, AEM_CTL_DISABLE, 0), 0);
  ASSERT_EQ(evsoft_raise(a, 1), 0);
  ASSERT_EQ(evsoft_raise(b, 2), 0);
  EXPECT_EQ(aem_dispatch(0), 0);
  EXPECT_TRUE(g_soft.empty());
  ASSERT_EQ(evctl(a, AEM_CTL_ENABLE, 0), 0);
  ASSERT_EQ(evctl(b, AEM_CTL_ENABLE, 0), 0);
  ASSERT_TRUE(dispatch_until([] { return g_soft.size() >= 2; }));
  // A level-triggered fd that became readable while disabled.
  static int fd_calls;
  fd_calls = 0;
  Pipe p;
  int f = evfd(p.rd.get(), POLLIN, AEM_LEVEL, [](int jid, int fd, unsigned) {
    char buf[8];
    if (read(fd, buf, sizeof buf) > 0) ++fd_calls;
    evctl(jid, AEM_CTL_DISABLE, 0);
  });
  ASSERT_GT(f, 0);
  ASSERT_EQ(evctl(f, AEM_CTL_DISABLE, 0), 0);
  ASSERT_TRUE(write_all(p.wr.get(), "ab", 2));
  // Let the backend see the readiness (pending > 0), while nothing runs.
  aem_event_info info{};
  const uint64_t end = mono_ns() + kWaitMs * 1000000ull;
  do {
    ASSERT_EQ(evctl(f, AEM_CTL_LOOKUP, ptr(&info)), 0);
    if (info.pending) break;
    EXPECT_EQ(aem_dispatch(2), 0);
  } while (mono_ns() < end);
  EXPECT_EQ(fd_calls, 0);
  ASSERT_EQ(evctl(f, AEM_CTL_ENABLE, 0), 0);
  ASSERT_TRUE(dispatch_until([] { return fd_calls >= 1; })) << "readiness not delivered after enable";
}

TEST_F(AEM_3_1_7, c2_FilterStopsPollOutOnlyDeliveries) {
  AEM_REQ("AEM-3.1.7");
  static std::vector<unsigned> before, after;
  static bool filtered;
  before.clear();
  after.clear();
  filtered = false;
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  int id = evfd(tp.server.get(), POLLIN | POLLOUT, 0, [](int jid, int fd, unsigned rev) {
    (filtered ? after : before).push_back(rev);
    if (!filtered && (rev & POLLOUT)) {
      filtered = evctl(jid, AEM_CTL_FILTER, POLLIN) == 0;
    }
    if (rev & POLLIN) {
      char buf[64];
      while (recv(fd, buf, sizeof buf, MSG_DONTWAIT) > 0) {
      }
    }
  });
  ASSERT_GT(id, 0);
  ASSERT_TRUE(dispatch_until([] { return filtered; })) << "no POLLOUT delivery, or the filter failed";
  ASSERT_TRUE(write_all(tp.client.get(), "data", 4));
  ASSERT_TRUE(dispatch_until([] {
    for (unsigned r : after)
      if (r & POLLIN) return true;
    return false;
  }));
  while (aem_dispatch(0) > 0) {
  }
  for (unsigned r : after) {
    EXPECT_EQ(r & POLLOUT, 0u) << "POLLOUT delivered after FILTER(POLLIN): " << std::hex << r;
    EXPECT_NE(r & (POLLIN | POLLERR | POLLHUP), 0u) << std::hex << r;
  }
  aem_event_info info{};
  ASSERT_EQ(evctl(id, AEM_CTL_LOOKUP, ptr(&info)), 0);
  EXPECT_EQ(info.events, static_cast<unsigned>(POLLIN));
}

TEST_F(AEM_3_1_7, c3_LookupFollowsTheControlCalls) {
  AEM_REQ("AEM-3.1.7");
  Pipe p;
  const unsigned long fl = AEM_PRIO(9) | AEM_EDGE | AEM_EXEC_THREAD;
  int id = evfd(p.rd.get(), POLLIN | POLLPRI, fl, noop_fd);
  ASSERT_GT(id, 0);
  aem_event_info info{};
  ASSERT_EQ(evctl(id, AEM_CTL_LOOKUP, ptr(&info)), 0);
  EXPECT_EQ(info.jid, id);
  EXPECT_EQ(info.type, AEM_EV_FD);
  EXPECT_EQ(info.fd, p.rd.get());
  EXPECT_EQ(info.prio, 9);
  EXPECT_EQ(info.enabled, 1);
  EXPECT_EQ(info.flags & ~static_cast<unsigned long>(AEM_LEVEL), fl);
  ASSERT_EQ(evctl(id, AEM_CTL_DISABLE, 0), 0);
  ASSERT_EQ(evctl(id, AEM_CTL_LOOKUP, ptr(&info)), 0);
  EXPECT_EQ(info.enabled, 0);
  ASSERT_EQ(evctl(id, AEM_CTL_ENABLE, 0), 0);
  ASSERT_EQ(evctl(id, AEM_CTL_LOOKUP, ptr(&info)), 0);
  EXPECT_EQ(info.enabled, 1);
  ASSERT_EQ(evctl(id, AEM_CTL_SET_PRIO, 44), 0);
  ASSERT_EQ(evctl(id, AEM_CTL_FILTER, POLLIN), 0);
  ASSERT_EQ(evctl(id, AEM_CTL_LOOKUP, ptr(&info)), 0);
  EXPECT_EQ(info.prio, 44);
  EXPECT_EQ(info.events, static_cast<unsigned>(POLLIN));
  EXPECT_EQ(info.jid, id);
  EXPECT_EQ(info.type, AEM_EV_FD);
}

TEST_F(AEM_3_1_7, c4_TimeoutWithoutActivationReportsOnceAndCleans) {
  AEM_REQ("AEM-3.1.7");
  static std::vector<std::pair<int, int>> errs;
  static uint64_t ticks;
  errs.clear();
  ticks = 0;
  ASSERT_EQ(aem_on_error([](int jid, int e) { errs.emplace_back(jid, e); }), 0);
  int idle = evsoft(0, noop_soft);
  ASSERT_GT(idle, 0);
  // A registration activated well within its time-out, again and again.
  timespec v{0, 5000000}, per{0, 5000000};
  int busy = evtimer(&v, &per, 0, [](int, uint64_t e) { ticks += e; });
  ASSERT_GT(busy, 0);
  ASSERT_EQ(evctl(idle, AEM_CTL_SET_TIMEOUT, 30), 0);
  ASSERT_EQ(evctl(busy, AEM_CTL_SET_TIMEOUT, 60), 0);
  ASSERT_TRUE(dispatch_until([] { return !errs.empty(); }));
  // Run for several of busy's time-outs: it never gets one.
  ASSERT_TRUE(dispatch_until([] { return ticks >= 60; }));
  ASSERT_EQ(errs.size(), 1u);
  EXPECT_EQ(errs[0].first, idle);
  EXPECT_EQ(errs[0].second, -ETIMEDOUT);
  aem_event_info info{};
  EXPECT_AEM_ERR(evctl(idle, AEM_CTL_LOOKUP, ptr(&info)), ENOENT);
  EXPECT_EQ(evctl(busy, AEM_CTL_LOOKUP, ptr(&info)), 0);
  ASSERT_EQ(evctl(busy, AEM_CTL_SET_TIMEOUT, 0), 0);
  measure("busy_timer_expirations", ticks);
}

TEST_F(AEM_3_1_7, c5_CleanedHandlerNeverCalledAndIdInvalid) {
  AEM_REQ("AEM-3.1.7");
  g_soft.clear();
  int id = evsoft(0, rec_soft);
  ASSERT_GT(id, 0);
  ASSERT_EQ(evsoft_raise(id, 1), 0);
  ASSERT_EQ(evsoft_raise(id, 2), 0);
  ASSERT_EQ(evctl(id, AEM_CTL_CLEAN, 0), 0);
  EXPECT_EQ(aem_dispatch(0), 0);
  EXPECT_TRUE(g_soft.empty()) << "the handler ran after CLEAN";
  aem_event_info info{};
  aem_event_stats st{};
  for (unsigned op = AEM_CTL_ENABLE; op <= AEM_CTL_MAX; ++op) {
    unsigned long arg = op == AEM_CTL_LOOKUP ? ptr(&info) : op == AEM_CTL_STATS ? ptr(&st)
                        : op == AEM_CTL_SET_PRIO ? 5 : op == AEM_CTL_FILTER ? POLLIN : 0;
    errno = 0;
    int r = evctl(id, op, arg);
    EXPECT_LT(r, 0) << "op " << op;
    EXPECT_EQ(errno, -r) << "op " << op;
  }
  EXPECT_LT(evsoft_raise(id, 3), 0);
}

TEST_F(AEM_3_1_7, c6_StatsCountActivationsAndOccurrences) {
  AEM_REQ("AEM-3.1.7");
  static uint64_t occ;
  occ = 0;
  int id = evsoft(0, [](int, uint64_t, uint64_t o) { occ += o; });
  ASSERT_GT(id, 0);
  constexpr uint64_t kN = 1000;
  for (uint64_t i = 0; i < kN; ++i) {
    ASSERT_EQ(evsoft_raise(id, i), 0);
    if (i % 97 == 0) aem_dispatch(0);
  }
  ASSERT_TRUE(dispatch_until([] { return occ >= kN; }));
  aem_event_stats st{};
  ASSERT_EQ(evctl(id, AEM_CTL_STATS, ptr(&st)), 0);
  EXPECT_EQ(st.activations, kN);
  EXPECT_EQ(occ, kN);
  EXPECT_EQ(st.pending, 0u);
  EXPECT_EQ(st.deliveries + st.merged, kN);
  measure("activations", st.activations);
  measure("deliveries", st.deliveries);
  // Occurrences held while the registration is disabled are pending,
  // wherever the implementation holds them (on kmod: in the kernel).
  ASSERT_EQ(evctl(id, AEM_CTL_DISABLE, 0), 0);
  constexpr uint64_t kHeld = 5;
  for (uint64_t i = 0; i < kHeld; ++i) ASSERT_EQ(evsoft_raise(id, i), 0);
  aem_dispatch(0);
  ASSERT_EQ(evctl(id, AEM_CTL_STATS, ptr(&st)), 0);
  EXPECT_EQ(st.activations, kN + kHeld);
  EXPECT_EQ(st.pending, kHeld) << "occurrences held while disabled are pending";
  EXPECT_EQ(occ, kN);
  ASSERT_EQ(evctl(id, AEM_CTL_ENABLE, 0), 0);
  ASSERT_TRUE(dispatch_until([] { return occ >= kN + kHeld; }));
  ASSERT_EQ(evctl(id, AEM_CTL_STATS, ptr(&st)), 0);
  EXPECT_EQ(st.pending, 0u);
  EXPECT_EQ(st.activations, kN + kHeld);
}

TEST_F(AEM_3_1_7, c7_UnknownOpRefusedEveryOpWorksFromAnotherThread) {
  AEM_REQ("AEM-3.1.7");
  int id = evsoft(0, noop_soft);
  ASSERT_GT(id, 0);
  EXPECT_AEM_ERR(evctl(id, 0, 0), EINVAL);
  EXPECT_AEM_ERR(evctl(id, AEM_CTL_MAX + 1, 0), EINVAL);
  EXPECT_AEM_ERR(evctl(id, 0xffffffffu, 0), EINVAL);
  Pipe p;
  int f = evfd(p.rd.get(), POLLIN | POLLOUT, AEM_EDGE | AEM_DISABLED, noop_fd);
  ASSERT_GT(f, 0);
  std::vector<std::pair<std::string, int>> rcs;
  std::thread other([&] {
    aem_event_info info{};
    aem_event_stats st{};
    rcs.emplace_back("ENABLE", evctl(f, AEM_CTL_ENABLE, 0));
    rcs.emplace_back("DISABLE", evctl(f, AEM_CTL_DISABLE, 0));
    rcs.emplace_back("FILTER", evctl(f, AEM_CTL_FILTER, POLLIN));
    rcs.emplace_back("LOOKUP", evctl(f, AEM_CTL_LOOKUP, ptr(&info)));
    rcs.emplace_back("SET_TIMEOUT", evctl(f, AEM_CTL_SET_TIMEOUT, 100000));
    rcs.emplace_back("SET_TIMEOUT 0", evctl(f, AEM_CTL_SET_TIMEOUT, 0));
    rcs.emplace_back("SET_PRIO", evctl(f, AEM_CTL_SET_PRIO, 12));
    rcs.emplace_back("STATS", evctl(f, AEM_CTL_STATS, ptr(&st)));
    rcs.emplace_back("CLEAN", evctl(f, AEM_CTL_CLEAN, 0));
    rcs.emplace_back("CLEAN soft", evctl(id, AEM_CTL_CLEAN, 0));
  });
  other.join();
  for (auto& [op, rc] : rcs) EXPECT_GE(rc, 0) << op << " from another thread";
}

}  // namespace
