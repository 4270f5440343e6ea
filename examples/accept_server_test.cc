// The seed's accept server, run as written: it must accept a few hundred
// loopback connections. Its handler keeps each accepted fd, so the proof is
// twofold: every connect completes although the listen backlog is 5 (the
// server keeps accepting), and the server ends up holding one fd per client.
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <vector>

#include "aem_req.hpp"

namespace {

constexpr int kPort = 47811;  // SERVER_PORT in accept_server.c
constexpr int kClients = 300;

double now_s() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// Non-blocking connect, completed within timeout_ms; returns the fd or -errno.
int connect_within(int timeout_ms) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(kPort);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) return fd;
  int e = errno;
  if (e == EINPROGRESS) {
    pollfd p{fd, POLLOUT, 0};
    if (poll(&p, 1, timeout_ms) == 1) {
      socklen_t len = sizeof e;
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len);
      if (e == 0) return fd;
    } else {
      e = ETIMEDOUT;
    }
  }
  close(fd);
  return -e;
}

int count_fds(pid_t pid) {
  std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = opendir(dir.c_str());
  if (!d) return -1;
  int n = 0;
  while (readdir(d)) ++n;
  closedir(d);
  return n - 2;
}

}  // namespace

TEST(SeedAcceptServer, ServesHundredsOfLoopbackConnections) {
  AEM_REQ("AEM-3.1.1", "AEM-3.6.1", "AEM-3.5.1");
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    setenv("AEM_BACKEND", "user", 1);
    execl(AEM_ACCEPT_SERVER, AEM_ACCEPT_SERVER, static_cast<char*>(nullptr));
    _exit(127);
  }
  // Wait until it listens: refused connects fail at once, so this loop
  // yields instead of sleeping, bounded by 20 s.
  std::vector<int> clients;
  const double until = now_s() + 20;
  int fd = -ECONNREFUSED;
  while (fd == -ECONNREFUSED && now_s() < until) {
    int st = 0;
    ASSERT_EQ(waitpid(pid, &st, WNOHANG), 0) << "the server exited early";
    fd = connect_within(5000);
    if (fd == -ECONNREFUSED) sched_yield();
  }
  ASSERT_GE(fd, 0) << "no connection: " << strerror(-fd);
  clients.push_back(fd);
  // Connect in batches no larger than the backlog, each once the server
  // holds the previous ones, so no SYN is dropped and retried a second
  // later: the test measures acceptance, not TCP's retransmission timer.
  const int base = count_fds(pid) - 1;  // its fds before our connections
  constexpr int kBatch = 4;
  int held = 0;
  while (static_cast<int>(clients.size()) < kClients) {
    for (int i = 0; i < kBatch && static_cast<int>(clients.size()) < kClients; ++i) {
      fd = connect_within(10000);
      ASSERT_GE(fd, 0) << "connection " << clients.size() << ": " << strerror(-fd);
      clients.push_back(fd);
    }
    const int want = base + static_cast<int>(clients.size());
    for (const double end = now_s() + 20; (held = count_fds(pid)) < want && now_s() < end;)
      sched_yield();
    ASSERT_GE(held, want) << "the server holds " << held - base << " of " << clients.size();
  }
  EXPECT_EQ(held - base, kClients);
  for (int c : clients) close(c);
  kill(pid, SIGTERM);
  int st = 0;
  waitpid(pid, &st, 0);
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM) << "status " << st;
}
