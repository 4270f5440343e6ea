// The seed's accept server, run as written: it must accept a few hundred
// loopback connections. The kernel's table of TCP sockets says how many it
// accepted: an established connection gets an inode only when accept()
// gives it a file.
#include <arpa/inet.h>
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
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "aem_req.hpp"

namespace {

// SERVER_PORT in accept_server.c: below Linux's ephemeral range (32768-60999),
// so no client socket of another test can hold it when the server binds.
constexpr int kPort = 27811;
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

// Connections the server has accepted: established sockets on the server's
// port that have an inode (a connection still in the listen backlog has
// none until accept() gives it a file).
int count_accepted() {
  FILE* f = fopen("/proc/net/tcp", "r");
  if (!f) return -1;
  char line[512];
  int n = 0;
  char want[8];
  snprintf(want, sizeof want, ":%04X", kPort);
  if (fgets(line, sizeof line, f)) {  // header
    while (fgets(line, sizeof line, f)) {
      char local[64], remote[64], st[8];
      unsigned long inode = 0;
      if (sscanf(line, "%*d: %63s %63s %7s %*s %*s %*s %*s %*s %lu", local, remote, st,
                 &inode) != 4)
        continue;
      if (strstr(local, want) && strcmp(st, "01") == 0 && inode != 0) ++n;
    }
  }
  fclose(f);
  return n;
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
  // has accepted the previous ones, so no SYN is dropped and retried a
  // second later: the test measures acceptance, not TCP's retransmission.
  constexpr int kBatch = 4;
  int accepted = 0;
  while (static_cast<int>(clients.size()) < kClients) {
    for (int i = 0; i < kBatch && static_cast<int>(clients.size()) < kClients; ++i) {
      fd = connect_within(10000);
      ASSERT_GE(fd, 0) << "connection " << clients.size() << ": " << strerror(-fd);
      clients.push_back(fd);
    }
    const int want = static_cast<int>(clients.size());
    for (const double end = now_s() + 20; (accepted = count_accepted()) < want && now_s() < end;)
      sched_yield();
    ASSERT_GE(accepted, want) << "the server accepted " << accepted << " of " << want;
  }
  EXPECT_EQ(accepted, kClients);
  // Reset, not FIN: no connection lingers in TIME_WAIT on the server's
  // port, so the next run (another preset) can bind it at once.
  for (int c : clients) {
    linger lg{1, 0};
    setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(c);
  }
  kill(pid, SIGTERM);
  int st = 0;
  waitpid(pid, &st, 0);
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM) << "status " << st;
}
