// Socket families: sockasync_accept/read/close/sk/sock, their errors, the
// seed's accept server, data in order, EOF, dispatching to several readers
// (AEM-3.1.2, 3.2.3, 3.5.1, 3.5.2, 3.6.5).
#include <sys/un.h>

#include <algorithm>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "test_util.hpp"

namespace {
using namespace aemtest;

class Sockets : public AemTest {};

TEST_F(Sockets, ErrorsOfEveryFamily) {
  AEM_REQ("AEM-3.1.3", "AEM-3.1.2");
  Pipe p;
  const int closed = 1 << 20;  // above RLIMIT_NOFILE: never an open fd
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  Fd l = tcp_listener();
  ASSERT_TRUE(l);
  Fd unbound(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  Fd udp = udp_socket();
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  Fd u0(sv[0]), u1(sv[1]);
  sockaddr_in addr{};
  socklen_t alen = sizeof addr;

  // sockasync_accept
  EXPECT_AEM_ERR(sockasync_accept(-1, nullptr, nullptr, 0, noop_accept), EBADF);
  EXPECT_AEM_ERR(sockasync_accept(closed, nullptr, nullptr, 0, noop_accept), EBADF);
  EXPECT_AEM_ERR(sockasync_accept(p.rd.get(), nullptr, nullptr, 0, noop_accept), ENOTSOCK);
  EXPECT_AEM_ERR(sockasync_accept(unbound.get(), nullptr, nullptr, 0, noop_accept), EINVAL);
  EXPECT_AEM_ERR(sockasync_accept(tp.server.get(), nullptr, nullptr, 0, noop_accept), EINVAL);
  EXPECT_AEM_ERR(sockasync_accept(udp.get(), nullptr, nullptr, 0, noop_accept), EINVAL);
  EXPECT_AEM_ERR(sockasync_accept(l.get(), nullptr, nullptr, 0, nullptr), EINVAL);
  EXPECT_AEM_ERR(sockasync_accept(l.get(), reinterpret_cast<sockaddr*>(&addr), nullptr, 0, noop_accept),
                 EINVAL);
  EXPECT_AEM_ERR(sockasync_accept(l.get(), reinterpret_cast<sockaddr*>(&addr), &alen, 0x4000u, noop_accept),
                 EINVAL);
  EXPECT_AEM_ERR(sockasync_accept(l.get(), nullptr, nullptr, AEM_PRIO(64), noop_accept), EINVAL);

  // sockasync_read
  EXPECT_AEM_ERR(sockasync_read(-1, 0, noop_read), EBADF);
  EXPECT_AEM_ERR(sockasync_read(closed, 0, noop_read), EBADF);
  EXPECT_AEM_ERR(sockasync_read(p.rd.get(), 0, noop_read), ENOTSOCK);
  EXPECT_AEM_ERR(sockasync_read(tp.server.get(), 0, nullptr), EINVAL);
  EXPECT_AEM_ERR(sockasync_read(tp.server.get(), 3u, noop_read), EINVAL);
  EXPECT_AEM_ERR(sockasync_read(tp.server.get(), 1ul << 35, noop_read), EINVAL);

  // sockasync_close
  EXPECT_AEM_ERR(sockasync_close(-1, 0, noop_close), EBADF);
  EXPECT_AEM_ERR(sockasync_close(p.wr.get(), 0, noop_close), ENOTSOCK);
  EXPECT_AEM_ERR(sockasync_close(tp.server.get(), 0, nullptr), EINVAL);
  EXPECT_AEM_ERR(sockasync_close(tp.server.get(), AEM_PRIO(-1), noop_close), EINVAL);

  // sockasync_sk
  EXPECT_AEM_ERR(sockasync_sk(-1, 0, noop_sk), EBADF);
  EXPECT_AEM_ERR(sockasync_sk(closed, 0, noop_sk), EBADF);
  EXPECT_AEM_ERR(sockasync_sk(p.rd.get(), 0, noop_sk), ENOTSOCK);
  EXPECT_AEM_ERR(sockasync_sk(udp.get(), 0, noop_sk), EOPNOTSUPP);
  EXPECT_AEM_ERR(sockasync_sk(u0.get(), 0, noop_sk), EOPNOTSUPP);
  EXPECT_AEM_ERR(sockasync_sk(tp.server.get(), 0, nullptr), EINVAL);
  EXPECT_AEM_ERR(sockasync_sk(tp.server.get(), 0x400u, noop_sk), EINVAL);

  // sockasync_sock
  EXPECT_AEM_ERR(sockasync_sock(-1, 0, noop_sock), EBADF);
  EXPECT_AEM_ERR(sockasync_sock(p.rd.get(), 0, noop_sock), ENOTSOCK);
  EXPECT_AEM_ERR(sockasync_sock(tp.server.get(), 0, nullptr), EINVAL);
  EXPECT_AEM_ERR(sockasync_sock(tp.server.get(), AEM_EDGE | AEM_LEVEL, noop_sock), EINVAL);

  // Every family works on a unix stream socket except sk.
  EXPECT_GT(sockasync_read(u0.get(), 0, noop_read), 0);
  EXPECT_GT(sockasync_close(u0.get(), 0, noop_close), 0);
  EXPECT_GT(sockasync_sock(u0.get(), AEM_EDGE, noop_sock), 0);
}

// --- accept

sockaddr_in g_caddr;
socklen_t g_clen;
std::vector<std::pair<uint16_t, uint16_t>> g_accepted;  // (port stored in addr, peer port of new_fd)
int g_listen_seen = -1;

void on_accept(int, int lfd, int nfd) {
  sockaddr_in peer{};
  socklen_t len = sizeof peer;
  getpeername(nfd, reinterpret_cast<sockaddr*>(&peer), &len);
  g_accepted.emplace_back(ntohs(g_caddr.sin_port), ntohs(peer.sin_port));
  g_listen_seen = lfd;
  close(nfd);
}

TEST_F(Sockets, AcceptFillsPeerAddressBeforeTheHandler) {
  AEM_REQ("AEM-3.1.2", "AEM-3.2.3");
  g_accepted.clear();
  memset(&g_caddr, 0, sizeof g_caddr);
  g_clen = sizeof g_caddr;
  Fd l = tcp_listener();
  ASSERT_TRUE(l);
  int id = sockasync_accept(l.get(), reinterpret_cast<sockaddr*>(&g_caddr), &g_clen, 0, on_accept);
  ASSERT_GT(id, 0);
  Fd c = tcp_connect(local_port(l.get()));
  ASSERT_TRUE(c);
  ASSERT_TRUE(dispatch_until([] { return !g_accepted.empty(); }));
  EXPECT_EQ(g_accepted[0].first, local_port(c.get()));
  EXPECT_EQ(g_accepted[0].second, local_port(c.get()));
  EXPECT_EQ(g_clen, static_cast<socklen_t>(sizeof(sockaddr_in)));
  EXPECT_EQ(g_caddr.sin_family, AF_INET);
  EXPECT_EQ(g_caddr.sin_addr.s_addr, htonl(INADDR_LOOPBACK));
  EXPECT_EQ(g_listen_seen, l.get());
}

TEST_F(Sockets, AcceptsHundredsOfConnectionsEachOnce) {
  AEM_REQ("AEM-3.5.1", "AEM-3.3.1", "AEM-3.6.1");
  constexpr int kConns = 300;
  g_accepted.clear();
  g_clen = sizeof g_caddr;
  Fd l = tcp_listener(1024);
  ASSERT_TRUE(l);
  int id = sockasync_accept(l.get(), reinterpret_cast<sockaddr*>(&g_caddr), &g_clen, 0, on_accept);
  ASSERT_GT(id, 0);
  std::vector<Fd> clients;
  std::set<uint16_t> ports;
  for (int i = 0; i < kConns; ++i) {
    clients.push_back(tcp_connect(local_port(l.get())));
    ASSERT_TRUE(clients.back());
    ports.insert(local_port(clients.back().get()));
    if (i % 50 == 0) aem_dispatch(0);  // accept while connecting too
  }
  ASSERT_TRUE(dispatch_until([] { return g_accepted.size() >= kConns; }));
  EXPECT_EQ(aem_dispatch(30), 0);
  EXPECT_EQ(g_accepted.size(), static_cast<size_t>(kConns));
  std::set<uint16_t> got;
  for (auto& [a, peer] : g_accepted) {
    EXPECT_EQ(a, peer);
    got.insert(peer);
  }
  EXPECT_EQ(got, ports);
  aem_event_stats st{};
  ASSERT_EQ(evctl(id, AEM_CTL_STATS, reinterpret_cast<unsigned long>(&st)), 0);
  EXPECT_EQ(st.activations, static_cast<uint64_t>(kConns));
  EXPECT_EQ(st.deliveries, static_cast<uint64_t>(kConns));  // never merged
}

// The seed's example server: register, then enter_keepalive(); here a
// handler stops it after the last expected connection.
TEST_F(Sockets, SeedAcceptServerWithKeepalive) {
  AEM_REQ("AEM-3.1.2", "AEM-3.2.3");
  static int n;
  static sockaddr_in c_addr;
  static int c_len;
  n = 0;
  c_len = sizeof c_addr;
  Fd l = tcp_listener(5);
  ASSERT_TRUE(l);
  int id = sockasync_accept(l.get(), reinterpret_cast<sockaddr*>(&c_addr),
                            reinterpret_cast<socklen_t*>(&c_len), 0, [](int, int, int nfd) {
                              close(nfd);
                              if (++n == 3) aem_stop();
                            });
  ASSERT_GT(id, 0);
  const uint16_t port = local_port(l.get());
  std::thread clients([port] {
    for (int i = 0; i < 3; ++i) Fd c = tcp_connect(port);
  });
  EXPECT_EQ(enter_keepalive(), 0);
  clients.join();
  EXPECT_EQ(n, 3);
  EXPECT_EQ(c_len, static_cast<int>(sizeof(sockaddr_in)));
}

// --- read

struct Stream {
  uint64_t offset = 0;   // bytes checked
  int eofs = 0;
  int after_eof = 0;     // calls after EOF: must stay 0
  bool bad = false;
  uint64_t bad_at = 0;
};
Stream g_streams[3];
int g_stream_ids[3];

inline unsigned char pattern(uint64_t i) { return static_cast<unsigned char>((i * 131 + (i >> 9)) & 0xff); }

void check_chunk(Stream& s, const void* data, size_t len) {
  if (s.eofs) ++s.after_eof;
  if (len == 0) {
    ++s.eofs;
    return;
  }
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < len; ++i)
    if (!s.bad && p[i] != pattern(s.offset + i)) {
      s.bad = true;
      s.bad_at = s.offset + i;
    }
  s.offset += len;
}

void read_into(int jid, int, const void* data, size_t len) {
  for (int i = 0; i < 3; ++i)
    if (g_stream_ids[i] == jid) check_chunk(g_streams[i], data, len);
}

// Writes total pattern bytes in uneven pieces, then closes the socket.
std::thread writer(Fd& fd, uint64_t total) {
  return std::thread([&fd, total] {
    std::vector<unsigned char> buf(70000);
    uint64_t off = 0;
    size_t piece = 1;
    while (off < total) {
      size_t n = std::min<uint64_t>(piece, total - off);
      for (size_t i = 0; i < n; ++i) buf[i] = pattern(off + i);
      if (!write_all(fd.get(), buf.data(), n)) break;
      off += n;
      piece = piece * 7 % 65521 + 1;
    }
    fd.reset();
  });
}

TEST_F(Sockets, ReadDataInOrderThenEofOnce) {
  AEM_REQ("AEM-3.1.2", "AEM-3.5.1", "AEM-3.2.3", "AEM-3.4.1");
  for (auto& s : g_streams) s = Stream{};
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  g_stream_ids[0] = sockasync_read(tp.server.get(), 0, read_into);
  ASSERT_GT(g_stream_ids[0], 0);
  constexpr uint64_t kTotal = 3 << 20;
  std::thread w = writer(tp.client, kTotal);
  bool done = dispatch_until([] { return g_streams[0].eofs > 0; }, 60000);
  w.join();
  ASSERT_TRUE(done);
  EXPECT_EQ(aem_dispatch(30), 0);
  EXPECT_EQ(g_streams[0].offset, kTotal);
  EXPECT_FALSE(g_streams[0].bad) << "wrong byte at " << g_streams[0].bad_at;
  EXPECT_EQ(g_streams[0].eofs, 1);
  EXPECT_EQ(g_streams[0].after_eof, 0);
}

TEST_F(Sockets, TwoReadersEachGetEveryByteInOrderThenEof) {
  AEM_REQ("AEM-3.6.5", "AEM-3.5.1");
  for (auto& s : g_streams) s = Stream{};
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  g_stream_ids[0] = sockasync_read(tp.server.get(), 0, read_into);
  g_stream_ids[1] = sockasync_read(tp.server.get(), AEM_PRIO(50), read_into);
  ASSERT_GT(g_stream_ids[0], 0);
  ASSERT_GT(g_stream_ids[1], 0);
  constexpr uint64_t kTotal = 2 << 20;
  std::thread w = writer(tp.client, kTotal);
  bool done = dispatch_until([] { return g_streams[0].eofs > 0 && g_streams[1].eofs > 0; }, 60000);
  w.join();
  ASSERT_TRUE(done);
  EXPECT_EQ(aem_dispatch(30), 0);
  for (int i = 0; i < 2; ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(g_streams[i].offset, kTotal);
    EXPECT_FALSE(g_streams[i].bad) << "wrong byte at " << g_streams[i].bad_at;
    EXPECT_EQ(g_streams[i].eofs, 1);
    EXPECT_EQ(g_streams[i].after_eof, 0);
  }
}

TEST_F(Sockets, ReaderInTheThreadExecutorAndOneHereBothGetEverything) {
  AEM_REQ("AEM-3.6.5", "AEM-3.1.6");
  static std::mutex mu;
  static Stream worker_stream;
  static Counter worker_eof;
  worker_stream = Stream{};
  worker_eof.reset();
  for (auto& s : g_streams) s = Stream{};
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  g_stream_ids[0] = sockasync_read(tp.server.get(), 0, read_into);
  int t = sockasync_read(tp.server.get(), AEM_EXEC_THREAD, [](int, int, const void* d, size_t len) {
    {
      std::lock_guard lk(mu);
      check_chunk(worker_stream, d, len);
    }
    if (len == 0) worker_eof.add();
  });
  ASSERT_GT(g_stream_ids[0], 0);
  ASSERT_GT(t, 0);
  constexpr uint64_t kTotal = 1 << 20;
  std::thread w = writer(tp.client, kTotal);
  bool done = dispatch_until([] { return g_streams[0].eofs > 0; }, 60000);
  w.join();
  ASSERT_TRUE(done);
  ASSERT_TRUE(worker_eof.wait_for(1));
  std::lock_guard lk(mu);
  EXPECT_EQ(g_streams[0].offset, kTotal);
  EXPECT_EQ(worker_stream.offset, kTotal);
  EXPECT_FALSE(g_streams[0].bad);
  EXPECT_FALSE(worker_stream.bad);
  EXPECT_EQ(worker_stream.eofs, 1);
}

TEST_F(Sockets, ResetIsReportedThenEof) {
  AEM_REQ("AEM-3.5.2", "AEM-3.5.1");
  static std::vector<std::pair<int, int>> errs;
  errs.clear();
  for (auto& s : g_streams) s = Stream{};
  ASSERT_EQ(aem_on_error([](int jid, int e) { errs.emplace_back(jid, e); }), 0);
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  g_stream_ids[0] = sockasync_read(tp.server.get(), 0, read_into);
  ASSERT_GT(g_stream_ids[0], 0);
  // Unread data in the client's receive queue makes close() send a reset.
  ASSERT_TRUE(write_all(tp.server.get(), "unread", 6));
  linger lg{1, 0};
  ASSERT_EQ(setsockopt(tp.client.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
  tp.client.reset();
  ASSERT_TRUE(dispatch_until([] { return g_streams[0].eofs > 0 && !errs.empty(); }));
  EXPECT_EQ(errs[0].first, g_stream_ids[0]);
  EXPECT_EQ(errs[0].second, -ECONNRESET);
  EXPECT_EQ(g_streams[0].eofs, 1);
}

// --- close

TEST_F(Sockets, CloseOnPeerCloseDeliveredOnce) {
  AEM_REQ("AEM-3.1.2", "AEM-3.5.1");
  static std::vector<std::pair<int, int>> closes;
  closes.clear();
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  int id = sockasync_close(tp.server.get(), 0, [](int jid, int fd) { closes.emplace_back(jid, fd); });
  ASSERT_GT(id, 0);
  EXPECT_EQ(aem_dispatch(20), 0);
  tp.client.reset();
  ASSERT_TRUE(dispatch_until([] { return !closes.empty(); }));
  EXPECT_EQ(aem_dispatch(30), 0);
  ASSERT_EQ(closes.size(), 1u);
  EXPECT_EQ(closes[0].first, id);
  EXPECT_EQ(closes[0].second, tp.server.get());
}

TEST_F(Sockets, CloseOnOwnShutdown) {
  AEM_REQ("AEM-3.1.2");
  static int closes;
  closes = 0;
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  ASSERT_GT(sockasync_close(tp.server.get(), 0, [](int, int) { ++closes; }), 0);
  ASSERT_EQ(shutdown(tp.server.get(), SHUT_RDWR), 0);
  ASSERT_TRUE(dispatch_until([] { return closes > 0; }));
  EXPECT_EQ(aem_dispatch(30), 0);
  EXPECT_EQ(closes, 1);
}

// --- sock

TEST_F(Sockets, SockPollMaskAndFilter) {
  AEM_REQ("AEM-3.1.2", "AEM-3.1.7", "PRF.5.0");
  static unsigned seen;
  static int calls;
  seen = 0;
  calls = 0;
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  int id = sockasync_sock(tp.server.get(), 0, [](int jid, int fd, unsigned ev) {
    ++calls;
    seen |= ev;
    if (ev & POLLOUT) evctl(jid, AEM_CTL_FILTER, POLLIN | POLLRDHUP);
    if (ev & POLLIN) {
      char buf[64];
      while (recv(fd, buf, sizeof buf, MSG_DONTWAIT) > 0) {
      }
    }
  });
  ASSERT_GT(id, 0);
  // A connected socket is writable: the first delivery says POLLOUT.
  ASSERT_TRUE(dispatch_until([] { return (seen & POLLOUT) != 0; }));
  aem_event_info info{};
  ASSERT_EQ(evctl(id, AEM_CTL_LOOKUP, reinterpret_cast<unsigned long>(&info)), 0);
  EXPECT_EQ(info.events, static_cast<unsigned>(POLLIN | POLLRDHUP));
  while (aem_dispatch(0) > 0) {
  }
  // Filtered to POLLIN|POLLRDHUP and drained: quiet until data arrives.
  seen = 0;
  calls = 0;
  EXPECT_EQ(aem_dispatch(30), 0);
  ASSERT_TRUE(write_all(tp.client.get(), "hello", 5));
  ASSERT_TRUE(dispatch_until([] { return (seen & POLLIN) != 0; }));
  EXPECT_EQ(seen & POLLOUT, 0u);
  // The peer closes: POLLRDHUP.
  tp.client.reset();
  ASSERT_TRUE(dispatch_until([] { return (seen & POLLRDHUP) != 0; }));
  ASSERT_EQ(evctl(id, AEM_CTL_CLEAN, 0), 0);
  // Bad filters.
  int id2 = sockasync_sock(tp.server.get(), AEM_EDGE, noop_sock);
  ASSERT_GT(id2, 0);
  EXPECT_AEM_ERR(evctl(id2, AEM_CTL_FILTER, 0), EINVAL);
  EXPECT_AEM_ERR(evctl(id2, AEM_CTL_FILTER, 0x40000000ul), EINVAL);
}

// --- sk

TEST_F(Sockets, SkTransitionToCloseWait) {
  AEM_REQ("AEM-3.1.2", "AEM-3.2.3");
  static std::vector<std::tuple<int, int, int>> tr;  // fd, old, new
  tr.clear();
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  int id = sockasync_sk(tp.server.get(), 0, [](int, int fd, int o, int n) { tr.emplace_back(fd, o, n); });
  ASSERT_GT(id, 0);
  EXPECT_EQ(aem_dispatch(20), 0);  // established: no transition yet
  tp.client.reset();
  ASSERT_TRUE(dispatch_until([] { return !tr.empty(); }));
  EXPECT_EQ(std::get<0>(tr[0]), tp.server.get());
  EXPECT_EQ(std::get<1>(tr[0]), TCP_ESTABLISHED);
  EXPECT_EQ(std::get<2>(tr[0]), TCP_CLOSE_WAIT);
}

TEST_F(Sockets, SkFilterOnNewState) {
  AEM_REQ("AEM-3.1.7", "AEM-3.1.2");
  static std::vector<std::pair<int, int>> tr;
  tr.clear();
  TcpPair tp;
  ASSERT_TRUE(tp.ok());
  int id = sockasync_sk(tp.server.get(), 0, [](int, int, int o, int n) { tr.emplace_back(o, n); });
  ASSERT_GT(id, 0);
  EXPECT_AEM_ERR(evctl(id, AEM_CTL_FILTER, 0), EINVAL);
  EXPECT_AEM_ERR(evctl(id, AEM_CTL_FILTER, 1ul), EINVAL);  // bit 0 is no TCP state
  EXPECT_AEM_ERR(evctl(id, AEM_CTL_FILTER, 1ul << 20), EINVAL);
  // Only transitions into TCP_CLOSE.
  ASSERT_EQ(evctl(id, AEM_CTL_FILTER, 1ul << TCP_CLOSE), 0);
  tp.client.reset();  // server: CLOSE_WAIT, filtered out
  // Wait for the state change itself, then make sure nothing was delivered.
  for (int i = 0; i < 2000; ++i) {
    tcp_info ti{};
    socklen_t len = sizeof ti;
    ASSERT_EQ(getsockopt(tp.server.get(), IPPROTO_TCP, TCP_INFO, &ti, &len), 0);
    if (ti.tcpi_state == TCP_CLOSE_WAIT) break;
    aem_dispatch(1);
  }
  EXPECT_EQ(aem_dispatch(30), 0);
  EXPECT_TRUE(tr.empty());
  // Our side closes too: LAST_ACK, then CLOSE once the peer acknowledges.
  ASSERT_EQ(shutdown(tp.server.get(), SHUT_WR), 0);
  ASSERT_TRUE(dispatch_until([] { return !tr.empty(); }));
  EXPECT_EQ(tr.back().second, TCP_CLOSE);
  for (auto& [o, n] : tr) EXPECT_EQ(n, TCP_CLOSE);
}

}  // namespace
