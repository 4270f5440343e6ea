// SPDX-License-Identifier: MIT
// The user-space backend: the AEM model (DESIGN §3) on a stock kernel with
// epoll, timerfd, eventfd, pidfd and an RT-signal doorbell.
//
// Structure
//   Engine     one AEM context. Owns the registrations, the sources the
//              kernel tells us about, the execution queues, the arena.
//   Reg        one registration. Embeds its queue link and its pending
//              state (occurrence counter, merged readiness, data items), so
//              an activation counts and links; it needs no queue memory.
//   Queue      one execution context: a registering thread (EXEC_SAME) or
//              the worker thread (EXEC_THREAD, EXEC_PROCESS). A priority
//              queue of pending registrations (bitmap + FIFO per level) and
//              the error notices for them. Exactly one thread serves a
//              queue, so handlers of one execution context never overlap.
//   Source     what epoll watches for registrations: a timerfd, a dup of
//              the application's fd, a shared socket reader, a child pidfd.
//
// Threads
//   poller     one per engine: epoll_wait, then the reactive jobs (read a
//              timerfd, accept, read socket data, sample the TCP state) and
//              the timeouts, which activate registrations.
//   worker     one per engine, started on the first THREAD or PROCESS
//              registration: serves the worker queue.
//   owners     a thread that registered EXEC_SAME events serves its queue in
//              aem_dispatch()/enter_keepalive(), or, after aem_set_async(1),
//              from the doorbell signal handler.
//
// Locking
//   Engine::mu_ protects every field of the engine, its registrations,
//   sources and queues, and the arena. It is one lock, never nested, and is
//   never held while a handler or an error handler runs. epoll events carry
//   a token, looked up under mu_, so an event for a source removed meanwhile
//   is ignored. The doorbell handler takes mu_ only when its thread is
//   outside the library (t_depth == 0); otherwise it defers to the moment the
//   thread leaves the library (Entry's destructor). cv_ (with mu_) wakes
//   AEM_CTL_CLEAN callers waiting for a handler running in another thread.
//   Fork: pthread_atfork's prepare takes every engine's mu_, so the child
//   starts from a consistent state and rebuilds on its first call; it
//   raises t_depth first, so no doorbell delivery runs on the forking
//   thread while it holds them.
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "backend.hpp"
#include "kmod/kmod.hpp"
#include "mutant.hpp"
#include "thread_start.hpp"
#include "user/arena.hpp"

namespace aem::detail {
namespace {

constexpr unsigned kSockDefault = POLLIN | POLLPRI | POLLOUT | POLLERR | POLLHUP | POLLRDHUP;
constexpr unsigned kTcpStateMask = 0x1ffeu;  // 1u << TCP_ESTABLISHED .. TCP_CLOSING
constexpr size_t kReadMax = 256 * 1024;      // one read chunk at most
constexpr size_t kReadCap = 1024 * 1024;     // pause reading above this per reader
constexpr int kDispatchBatch = 4096;         // handlers per aem_dispatch() call
constexpr size_t kMaxEngines = 64;

// Thread-local state. t_depth counts nested library entries on this thread;
// t_running counts handlers running on it; t_in_signal is set while the
// doorbell handler delivers, where the library must not allocate or free.
thread_local int t_depth = 0;
thread_local int t_running = 0;
thread_local volatile sig_atomic_t t_deferred = 0;
thread_local bool t_in_signal = false;

// A FIFO whose pop never frees memory: the delivery path may run inside
// the doorbell signal handler (asynchronous delivery), where freeing is not
// safe. It grows on push (activation, outside signal handlers) and gives
// its memory back when destroyed.
template <class T>
class Fifo {
 public:
  bool empty() const { return n_ == 0; }
  size_t size() const { return n_; }
  T& front() { return buf_[head_]; }
  void pop_front() {
    buf_[head_] = T{};
    head_ = (head_ + 1) % buf_.size();
    --n_;
  }
  template <class... A>
  void emplace_back(A&&... a) {
    if (n_ == buf_.size()) grow();
    buf_[(head_ + n_) % buf_.size()] = T{std::forward<A>(a)...};
    ++n_;
  }
  void push_back(T v) { emplace_back(std::move(v)); }
  void clear() {
    while (n_) pop_front();
  }
  template <class F>
  void for_each(F&& f) {
    for (size_t i = 0; i < n_; ++i) f(buf_[(head_ + i) % buf_.size()]);
  }
  template <class P>
  void erase_if(P&& p) {
    size_t kept = 0;
    for (size_t i = 0; i < n_; ++i) {
      T& x = buf_[(head_ + i) % buf_.size()];
      if (!p(x)) buf_[(head_ + kept++) % buf_.size()] = std::move(x);
    }
    while (n_ > kept) buf_[(head_ + --n_) % buf_.size()] = T{};
  }

 private:
  void grow() {
    std::vector<T> nb(std::max<size_t>(4, buf_.size() * 2));
    for (size_t i = 0; i < n_; ++i) nb[i] = std::move(buf_[(head_ + i) % buf_.size()]);
    buf_.swap(nb);
    head_ = 0;
  }
  std::vector<T> buf_;
  size_t head_ = 0;
  size_t n_ = 0;
};

// This thread's id, cached; atfork_child() forgets it, since the child's
// thread has another id than the parent's that forked it.
thread_local pid_t t_tid = 0;

pid_t self_tid() {
  if (t_tid == 0) t_tid = gettid();
  return t_tid;
}

uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

int doorbell_signal() { return SIGRTMAX - 1; }

class Engine;
std::array<std::atomic<Engine*>, kMaxEngines> g_engines{};
void run_deferred_async();

// Every public entry point holds one: the doorbell handler defers while the
// thread is inside the library, and runs what it deferred on the way out.
struct Entry {
  Entry() { ++t_depth; }
  ~Entry() {
    if (--t_depth == 0 && t_deferred) run_deferred_async();
  }
  Entry(const Entry&) = delete;
  Entry& operator=(const Entry&) = delete;
};

// Event data: one chunk read from a socket, shared by every read
// registration on it (dispatching, AEM-3.6.5); freed when the last one is
// delivered.
struct Chunk {
  void* p = nullptr;
  size_t len = 0;
  int refs = 0;
  Arena* arena = nullptr;  // non-null: from the arena
  Allocator alloc;         // otherwise: the application's allocator
  Chunk* next = nullptr;   // in the engine's pool of free headers
};

struct Accepted {
  int fd = -1;
  sockaddr_storage addr{};
  socklen_t len = 0;
};

struct Queue;

struct Reg : std::enable_shared_from_this<Reg> {
  int id = 0;
  int type = 0;
  uint64_t flags = 0;
  int prio = AEM_PRIO_DEFAULT;
  unsigned exec = AEM_EXEC_SAME;
  bool edge = false;
  int fd = -1;          // the application's fd
  unsigned events = 0;  // filter: poll bits or TCP state mask
  Invoker invoke;
  sockaddr* uaddr = nullptr;
  socklen_t* uaddrlen = nullptr;
  Queue* q = nullptr;  // its execution context
  uint64_t token = 0;  // its source; 0: none

  bool live = true;
  bool doomed = false;  // invalid, waiting for the poller to clean it
  Reg* doomed_next = nullptr;
  bool enabled = true;
  bool queued = false;      // linked in q's level FIFO
  bool overflowed = false;  // linked in the engine's overflow FIFO
  bool running = false;     // its handler runs now
  pid_t runner = 0;         // on this thread
  Reg* prev = nullptr;      // FIFO links (level or overflow)
  Reg* next = nullptr;

  // Pending state: occurrences activated and not yet delivered.
  uint64_t pending = 0;
  unsigned revents = 0;     // fd, sock: merged readiness
  uint64_t value = 0;       // soft: latest value
  Fifo<uint64_t> values;    // soft, per occurrence
  Fifo<Accepted> accepted;  // accept: one per connection
  Fifo<Chunk*> chunks;      // read: nullptr is EOF
  size_t chunk_bytes = 0;
  Fifo<std::pair<int, int>> transitions;  // sk
  int tcp_state = 0;                      // sk: last observed

  uint64_t timeout_ms = 0;
  std::multimap<uint64_t, int>::iterator deadline;
  bool has_deadline = false;

  aem_event_stats st{};
#if AEM_MUTANT(drop_occurrence)
  uint64_t mutant_raises = 0;  // MUTANT drop_occurrence: raises so far
#endif
};

struct Queue {
  pid_t tid = 0;
  bool worker = false;
  uint64_t bitmap = 0;  // bit p: level p non-empty
  std::array<Reg*, AEM_PRIO_LEVELS> head{};
  std::array<Reg*, AEM_PRIO_LEVELS> tail{};
  Fifo<std::pair<int, int>> notices;  // (jid, -errno)
  int wakefd = -1;                    // eventfd: wakes its waiter
  bool waiting = false;               // its thread waits on wakefd
  bool async = false;                 // aem_set_async(1)
  bool busy = false;                  // a handler of it runs
  int running_prio = -1;
  std::atomic<bool> bell{false};  // doorbell sent, not yet served
  int base_nice = 0;
  int boost = 0;
};

enum class SrcKind { Wake, Timer, Fd, Accept, Close, Sk, Reader, Child };

struct Source {
  SrcKind kind = SrcKind::Wake;
  uint64_t token = 0;  // its key in Engine::sources_ and epoll's data
  int fd = -1;         // what epoll watches (our own fd: a dup, timerfd, pidfd)
  uint32_t interest = 0;
  bool oneshot = false;       // level-triggered by hand: re-armed after delivery
  bool added = false;         // in the epoll set
  bool armed = false;         // will report the next readiness
  Reg* reg = nullptr;         // owner (all kinds but Reader, Child)
  std::vector<Reg*> readers;  // Reader: its read registrations
  dev_t dev = 0;              // Reader: the socket's identity
  ino_t ino = 0;
  int app_fd = -1;
  bool eof = false;
  bool paused = false;                // Reader: over kReadCap or no memory
  pid_t child = 0;                    // Child
  Chunk* chunk = nullptr;             // Child: data it was given
  clockid_t clock = CLOCK_MONOTONIC;  // Timer
#if AEM_MUTANT(lose_read_data)
  unsigned mutant_chunks = 0;  // MUTANT lose_read_data: chunks read (Reader)
#endif
};

void install_doorbell();
void atfork_prepare();
void atfork_parent();
void atfork_child();

class Engine final : public Backend {
 public:
  Engine(const Policy& p) : policy_(p) {}
  ~Engine() override { shutdown(); }

  int init();
  const char* name() const override { return "user"; }
  int add(Spec&& spec) override;
  int raise(int jid, uint64_t value) override;
  int ctl(int jid, unsigned int op, unsigned long arg) override;
  int dispatch(int timeout_ms) override;
  int keepalive() override;
  void stop() override;
  int set_async(int on) override;
  void on_error(ErrorHandler handler) override;
  void set_allocator(const Allocator& a) override;
  int shutdown() override;

  void run_async_here();
  std::mutex mu_;
  std::atomic<bool> forked_{false};

 private:
  // Under mu_.
  Queue& own_queue();
  Queue& worker_queue();
  void enqueue(Reg& r);
  void dequeue(Reg& r);
  void make_ready(Reg& r);
  void drain_overflow();
  void wake(Queue& q);
  void notice(Reg& r, int err);
  void update_boost(Queue& q);
  void touch_deadline(Reg& r);
  void clean_locked(Reg& r);
  void doom(Reg& r);
  void bury(std::unique_lock<std::mutex>& lk);
  void release_chunk(Chunk* c);
  Chunk* new_chunk(size_t len);
  uint64_t add_source(std::unique_ptr<Source> s);
  void drop_source(uint64_t token);
  int arm(Source& s);
  void rearm_after_delivery(Reg& r);
  void resume_readers();
  // Returns 1 when a handler ran, 0 when an item was consumed without one,
  // -1 when the queue is empty.
  int run_one(Queue& q, std::unique_lock<std::mutex>& lk);
  int wait(Queue& q, std::unique_lock<std::mutex>& lk, int timeout_ms);
  void check_fork();
  void rebuild_child();
  void forget_parent();
  int start_threads();
  void poller_loop();
  void worker_loop();
  void on_ready(Source& s, uint32_t ev);
  void job_timer(Source& s);
  void job_fd(Source& s, uint32_t ev);
  void job_accept(Source& s);
  void job_close(Source& s);
  void job_sk(Source& s);
  void job_read(Source& s);
  void job_child(Source& s);
  void expire_deadlines();
  int new_id();
  Reg* find(int jid);
  int setup_source(Reg& r, const Spec& spec);

  Policy policy_;
  int slot_ = -1;
  int epfd_ = -1;
  uint64_t wake_token_ = 0;
  int pwake_ = -1;  // wakes the poller
  bool stopping_ = false;
  std::unique_ptr<std::thread> poller_;
  std::unique_ptr<std::thread> worker_;
  std::unique_ptr<Arena> arena_;
  Chunk* chunk_pool_ = nullptr;                     // free chunk headers, reused
  std::vector<std::unique_ptr<Arena>> old_arenas_;  // a parent's, after fork
  Allocator user_alloc_;
  std::condition_variable cv_;
  std::shared_ptr<ErrorHandler> err_handler_;  // copied without allocating

  std::unordered_map<int, std::shared_ptr<Reg>> regs_;
  int next_id_ = 1;
  std::unordered_map<uint64_t, std::unique_ptr<Source>> sources_;
  std::map<std::tuple<dev_t, ino_t, int>, uint64_t> readers_;  // socket -> its Reader
  uint64_t next_token_ = 1;
  std::unordered_map<pid_t, std::unique_ptr<Queue>> queues_;
  std::unique_ptr<Queue> wq_;  // the worker queue
  size_t npending_ = 0;        // registrations linked in a queue
  Reg* doomed_ = nullptr;      // see doom()
  Reg* ov_head_ = nullptr;     // overflow FIFO (pending limit reached)
  Reg* ov_tail_ = nullptr;
  bool overloaded_ = false;
  bool readers_want_memory_ = false;
  std::multimap<uint64_t, int> deadlines_;
  // Cleaned registrations, destroyed by bury() with mu_ released: their
  // handlers may own registrations of this context, whose destructors call
  // back into it.
  std::vector<std::shared_ptr<Reg>> graveyard_;
  bool stop_requested_ = false;
  int keepalive_count_ = 0;
};

// ---------------------------------------------------------------------------
// Set-up and teardown.

int Engine::init() {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); });
  for (size_t i = 0; i < kMaxEngines; ++i) {
    Engine* expected = nullptr;
    if (g_engines[i].compare_exchange_strong(expected, this)) {
      slot_ = static_cast<int>(i);
      break;
    }
  }
  if (slot_ < 0) return -EMFILE;
  arena_ = std::make_unique<Arena>(policy_.arena_bytes);
  if (!arena_->ok()) return -ENOMEM;
  std::lock_guard lk(mu_);
  return start_threads();
}

int Engine::start_threads() {
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) return -errno;
  pwake_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (pwake_ < 0) return -errno;
  auto w = std::make_unique<Source>();
  w->kind = SrcKind::Wake;
  w->fd = pwake_;
  w->interest = EPOLLIN;
  wake_token_ = add_source(std::move(w));
  if (int r = arm(*sources_[wake_token_]); r < 0) return r;
  try {
    poller_ = start_running([this] { poller_loop(); });
  } catch (const std::system_error& e) {
    return -e.code().value();
  }
  return 0;
}

int Engine::shutdown() {
  std::unique_lock lk(mu_);
  if (stopping_) return 0;
  if (forked_.load()) forget_parent();  // a child that never used it
  stopping_ = true;
  std::vector<std::shared_ptr<Reg>> all;
  for (auto& [id, r] : regs_) all.push_back(r);
  for (auto& r : all) clean_locked(*r);
  all.clear();
  bury(lk);
  uint64_t one = 1;
  if (poller_ && write(pwake_, &one, sizeof one) < 0) {
  }
  if (worker_ && write(wq_->wakefd, &one, sizeof one) < 0) {
  }
  lk.unlock();
  if (poller_ && poller_->joinable() && poller_->get_id() != std::this_thread::get_id())
    poller_->join();
  if (worker_ && worker_->joinable() && worker_->get_id() != std::this_thread::get_id())
    worker_->join();
  lk.lock();
  for (auto& [t, s] : sources_) {
    if (s->kind == SrcKind::Child && s->child > 0) {
      waitpid(s->child, nullptr, 0);  // its handler may still read the data
      release_chunk(s->chunk);
    }
    if (s->fd >= 0) close(s->fd);
  }
  sources_.clear();
  for (auto& [t, q] : queues_)
    if (q->wakefd >= 0) close(q->wakefd);
  if (wq_ && wq_->wakefd >= 0) close(wq_->wakefd);
  if (epfd_ >= 0) close(epfd_);
  epfd_ = pwake_ = -1;
  while (Chunk* c = chunk_pool_) {
    chunk_pool_ = c->next;
    delete c;
  }
  doomed_ = nullptr;  // cleaned with the others above
  if (slot_ >= 0) g_engines[static_cast<size_t>(slot_)].store(nullptr);
  return 0;
}

// ---------------------------------------------------------------------------
// Queues. Activation: count, then link; never allocates queue memory.

Queue& Engine::own_queue() {
  pid_t tid = self_tid();
  auto it = queues_.find(tid);
  if (it != queues_.end()) return *it->second;
  auto q = std::make_unique<Queue>();
  q->tid = tid;
  q->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  errno = 0;
  q->base_nice = getpriority(PRIO_PROCESS, static_cast<id_t>(tid));
  Queue& ref = *q;
  queues_.emplace(tid, std::move(q));
  return ref;
}

Queue& Engine::worker_queue() {
  if (!wq_) {
    wq_ = std::make_unique<Queue>();
    wq_->worker = true;
    wq_->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  }
  if (!worker_) worker_ = start_running([this] { worker_loop(); });
  return *wq_;
}

void Engine::wake(Queue& q) {
  if (q.waiting) {
    uint64_t one = 1;
    if (write(q.wakefd, &one, sizeof one) < 0) {
      // The counter cannot overflow in practice; a failed write still
      // leaves it readable.
    }
  } else if (q.async && !q.busy && q.tid > 0 && !q.bell.exchange(true)) {
    // Ring once (0 -> 1); the handler clears it before draining. A queue
    // being served right now (busy) drains what is added meanwhile.
    tgkill(getpid(), q.tid, doorbell_signal());
  }
}

void Engine::enqueue(Reg& r) {
  Queue& q = *r.q;
#if AEM_MUTANT(fifo_dispatch)
  const size_t lvl = 0;  // MUTANT fifo_dispatch: every priority on one FIFO level
#else
  const auto lvl = static_cast<size_t>(r.prio);
#endif
  r.prev = q.tail[lvl];
  r.next = nullptr;
  if (q.tail[lvl])
    q.tail[lvl]->next = &r;
  else
    q.head[lvl] = &r;
  q.tail[lvl] = &r;
  q.bitmap |= uint64_t{1} << lvl;
  r.queued = true;
  ++npending_;
  update_boost(q);
  wake(q);
}

void Engine::dequeue(Reg& r) {
  if (r.queued) {
    Queue& q = *r.q;
#if AEM_MUTANT(fifo_dispatch)
    const size_t lvl = 0;  // MUTANT fifo_dispatch: every priority on one FIFO level
#else
    const auto lvl = static_cast<size_t>(r.prio);
#endif
    (r.prev ? r.prev->next : q.head[lvl]) = r.next;
    (r.next ? r.next->prev : q.tail[lvl]) = r.prev;
    if (!q.head[lvl]) q.bitmap &= ~(uint64_t{1} << lvl);
    r.queued = false;
    --npending_;
    update_boost(q);  // a cleaned or disabled event no longer raises it
  } else if (r.overflowed) {
    (r.prev ? r.prev->next : ov_head_) = r.next;
    (r.next ? r.next->prev : ov_tail_) = r.prev;
    r.overflowed = false;
  }
  r.prev = r.next = nullptr;
}

void Engine::make_ready(Reg& r) {
#if AEM_MUTANT(deliver_disabled)
  // MUTANT deliver_disabled: r.enabled is not looked at.
  if (!r.live || r.doomed || r.queued || r.overflowed || r.pending == 0) return;
#else
  if (!r.live || r.doomed || !r.enabled || r.queued || r.overflowed || r.pending == 0) return;
#endif
  if (npending_ >= policy_.max_pending) {
    // Over the pending limit: held in order, still counted, and the
    // application is told once per overload episode.
    r.prev = ov_tail_;
    r.next = nullptr;
    (ov_tail_ ? ov_tail_->next : ov_head_) = &r;
    ov_tail_ = &r;
    r.overflowed = true;
    if (!overloaded_) {
      overloaded_ = true;
      notice(r, -EOVERFLOW);
    }
    return;
  }
  enqueue(r);
}

void Engine::drain_overflow() {
  while (ov_head_ && npending_ < policy_.max_pending) {
    Reg* r = ov_head_;
    dequeue(*r);
    enqueue(*r);
  }
  if (!ov_head_) overloaded_ = false;
}

void Engine::notice(Reg& r, int err) {
  ++r.st.errors;
#if AEM_MUTANT(skip_error_notification)
  return;  // MUTANT skip_error_notification: counted, never reported
#endif
  Queue& q = *r.q;
  bool dup = false;
  q.notices.for_each([&](const auto& n) { dup |= n.first == r.id && n.second == err; });
  if (dup) return;  // one pending is enough
  q.notices.emplace_back(r.id, err);
  wake(q);
}

// Process priority enforcement (AEM-3.2.2): while an event above the
// default priority is pending or running on a queue, its thread's nice value
// is lowered by up to boost_ceiling steps, and restored afterwards. Only
// what the thread may do itself (RLIMIT_NICE, CAP_SYS_NICE): a refusal
// leaves the priority as it is.
void Engine::update_boost(Queue& q) {
  if (q.tid <= 0 || policy_.boost_ceiling <= 0) return;
  int top = q.bitmap ? 63 - std::countl_zero(q.bitmap) : -1;
  top = std::max(top, q.running_prio);
  int steps = 0;
  if (top > AEM_PRIO_DEFAULT)
    steps =
        ((top - AEM_PRIO_DEFAULT) * policy_.boost_ceiling + (AEM_PRIO_MAX - AEM_PRIO_DEFAULT) - 1) /
        (AEM_PRIO_MAX - AEM_PRIO_DEFAULT);
  if (steps == q.boost) return;
  if (setpriority(PRIO_PROCESS, static_cast<id_t>(q.tid), q.base_nice - steps) == 0)
    q.boost = steps;
}

void Engine::touch_deadline(Reg& r) {
  if (r.has_deadline) {
    deadlines_.erase(r.deadline);
    r.has_deadline = false;
  }
  if (!r.timeout_ms || !r.live) return;
  uint64_t at = now_ns() + r.timeout_ms * 1000000ull;
  bool first = deadlines_.empty() || at < deadlines_.begin()->first;
  r.deadline = deadlines_.emplace(at, r.id);
  r.has_deadline = true;
  if (first) {
    uint64_t one = 1;
    if (write(pwake_, &one, sizeof one) < 0) {
    }
  }
}

// ---------------------------------------------------------------------------
// Sources.

uint64_t Engine::add_source(std::unique_ptr<Source> s) {
  uint64_t t = next_token_++;
  s->token = t;
  s->added = s->armed = false;
  sources_.emplace(t, std::move(s));
  return t;
}

// Adds the source to the epoll set, or re-arms it (a oneshot source after
// its delivery, any source after a filter change).
int Engine::arm(Source& s) {
  epoll_event ev{};
  ev.events = s.interest | (s.oneshot ? EPOLLONESHOT : 0u);
  ev.data.u64 = s.token;
  if (epoll_ctl(epfd_, s.added ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s.fd, &ev) < 0) return -errno;
  s.added = s.armed = true;
  return 0;
}

void Engine::drop_source(uint64_t token) {
  auto it = sources_.find(token);
  if (it == sources_.end()) return;
  Source& s = *it->second;
  if (s.kind == SrcKind::Reader) readers_.erase(std::tuple(s.dev, s.ino, s.app_fd));
  if (s.fd >= 0) {
    if (s.added) epoll_ctl(epfd_, EPOLL_CTL_DEL, s.fd, nullptr);
    close(s.fd);
  }
  sources_.erase(it);
}

Chunk* Engine::new_chunk(size_t len) {
  Chunk* c = chunk_pool_;
  if (c)
    chunk_pool_ = c->next;
  else
    c = new (std::nothrow) Chunk;
  if (!c) return nullptr;
  *c = Chunk{};
  c->len = len;
  if (user_alloc_.alloc) {
    c->alloc = user_alloc_;
    c->p = user_alloc_.alloc(len, user_alloc_.opaque);
  } else {
    c->arena = arena_.get();
    c->p = arena_->alloc(len);
  }
  if (!c->p) {
    c->next = chunk_pool_;
    chunk_pool_ = c;
    return nullptr;
  }
  return c;
}

void Engine::release_chunk(Chunk* c) {
  if (!c || --c->refs > 0) return;
  if (c->arena) {
    if (c->arena == arena_.get()) arena_->release(c->p);  // else: a parent's, after fork
  } else if (c->alloc.release) {
    c->alloc.release(c->p, c->len, c->alloc.opaque);
  }
  c->next = chunk_pool_;  // kept for reuse: this may run in a signal handler
  chunk_pool_ = c;
  if (readers_want_memory_) resume_readers();
}

void Engine::resume_readers() {
  readers_want_memory_ = false;
  for (auto& [t, s] : sources_) {
    if (s->kind != SrcKind::Reader || !s->paused || s->eof) continue;
    bool over = false;
    for (Reg* r : s->readers) over |= r->chunk_bytes > kReadCap;
    if (!over) {
      s->paused = false;
      arm(*s);
    }
  }
}

// ---------------------------------------------------------------------------
// Registration.

int tcp_state_of(int fd) {
  tcp_info ti{};
  socklen_t len = sizeof ti;
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0) return -errno;
  return ti.tcpi_state;
}

int Engine::setup_source(Reg& r, const Spec& spec) {
  auto s = std::make_unique<Source>();
  s->reg = &r;
  s->app_fd = spec.fd;
  switch (spec.type) {
    case AEM_EV_TIMER: {
      s->kind = SrcKind::Timer;
      s->clock = (spec.flags & AEM_REALTIME) ? CLOCK_REALTIME : CLOCK_MONOTONIC;
      s->fd = timerfd_create(s->clock, TFD_NONBLOCK | TFD_CLOEXEC);
      if (s->fd < 0) return -errno;
      itimerspec its{};
      its.it_value = *spec.value;
      if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) its.it_value.tv_nsec = 1;
      if (spec.period) its.it_interval = *spec.period;
      int tf = (spec.flags & AEM_ABSTIME) ? TFD_TIMER_ABSTIME : 0;
      if (timerfd_settime(s->fd, tf, &its, nullptr) < 0) {
        int e = -errno;
        close(s->fd);
        return e;
      }
      s->interest = EPOLLIN;
      break;
    }
    case AEM_EV_READ: {
      struct stat st;
      fstat(spec.fd, &st);
      // One reader per socket: every read registration gets every byte.
      auto found = readers_.find(std::tuple(st.st_dev, st.st_ino, spec.fd));
      if (found != readers_.end()) {
        sources_.at(found->second)->readers.push_back(&r);
        r.token = found->second;
        return 0;
      }
      s->kind = SrcKind::Reader;
      s->reg = nullptr;
      s->readers.push_back(&r);
      s->dev = st.st_dev;
      s->ino = st.st_ino;
      s->interest = EPOLLIN | EPOLLRDHUP;
      s->oneshot = true;
      break;
    }
    case AEM_EV_ACCEPT:
      s->kind = SrcKind::Accept;
      s->interest = EPOLLIN;
      s->oneshot = true;
      break;
    case AEM_EV_CLOSE:
      s->kind = SrcKind::Close;
      s->interest = EPOLLRDHUP | EPOLLHUP;
      s->oneshot = true;
      break;
    case AEM_EV_SK:
      s->kind = SrcKind::Sk;
      s->interest = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI | EPOLLET;
      break;
    case AEM_EV_FD:
    case AEM_EV_SOCK:
      s->kind = SrcKind::Fd;
      s->interest = r.events;
      if (r.edge)
        s->interest |= EPOLLET;
      else
        s->oneshot = true;
      break;
    default:
      return 0;  // software events have no source
  }
  if (s->kind != SrcKind::Timer) {
    s->fd = fcntl(spec.fd, F_DUPFD_CLOEXEC, 0);
    if (s->fd < 0) return -errno;
  }
  Source& ref = *s;
  const uint64_t t = add_source(std::move(s));
  if (int e = arm(ref); e < 0) {
    drop_source(t);
    return e;
  }
  if (ref.kind == SrcKind::Reader) readers_.emplace(std::tuple(ref.dev, ref.ino, ref.app_fd), t);
  r.token = t;
  return 0;
}

int Engine::new_id() {
#if AEM_MUTANT(reuse_live_id)
  // MUTANT reuse_live_id: ids wrap after 4096 and a live one is issued again.
  int id = next_id_;
  next_id_ = next_id_ == 4096 ? 1 : next_id_ + 1;
  return id;
#else
  for (;;) {
    int id = next_id_;
    next_id_ = next_id_ == INT_MAX ? 1 : next_id_ + 1;
    if (!regs_.count(id)) return id;
  }
#endif
}

Reg* Engine::find(int jid) {
  auto it = regs_.find(jid);
  return it == regs_.end() || it->second->doomed ? nullptr : it->second.get();
}

// Unregisters r without freeing anything now: it is invalid at once and
// cleaned by the poller (the caller may be the doorbell signal handler).
void Engine::doom(Reg& r) {
  r.doomed = true;
  dequeue(r);
  r.doomed_next = doomed_;
  doomed_ = &r;
  uint64_t one = 1;
  if (write(pwake_, &one, sizeof one) < 0) {
  }
}

int Engine::add(Spec&& spec) {
  Entry entry;
  check_fork();
  int prio = 0;
  unsigned exec = 0;
  if (int e = check_spec(spec, policy_, policy_.min_timer_period_ns, prio, exec); e < 0) return e;

  std::unique_lock lk(mu_);
  if (stopping_) return -ESHUTDOWN;
#if !AEM_MUTANT(ignore_limit)  // MUTANT ignore_limit: no registration limit
  if (regs_.size() >= policy_.max_registrations) return -ENOSPC;
#endif
  auto r = std::make_shared<Reg>();
  r->type = spec.type;
  r->flags = spec.flags;
  // The effective trigger is visible in AEM_CTL_LOOKUP: level by default.
  if ((spec.type == AEM_EV_FD || spec.type == AEM_EV_SOCK) && !(spec.flags & (AEM_EDGE | AEM_LEVEL)))
    r->flags |= AEM_LEVEL;
  r->prio = prio;
  r->exec = exec;
  r->edge = (spec.flags & AEM_EDGE) != 0;
  r->fd = (spec.type == AEM_EV_TIMER || spec.type == AEM_EV_SOFT) ? -1 : spec.fd;
  r->enabled = !(spec.flags & AEM_DISABLED);
  r->invoke = std::move(spec.invoke);
  r->uaddr = spec.addr;
  r->uaddrlen = spec.addrlen;
  if (spec.type == AEM_EV_FD) r->events = spec.events;
  if (spec.type == AEM_EV_SOCK) r->events = kSockDefault;
  if (spec.type == AEM_EV_SK) {
    r->events = kTcpStateMask;
    int st = tcp_state_of(spec.fd);
    r->tcp_state = st > 0 ? st : 0;
  }
  r->q = exec == AEM_EXEC_SAME ? &own_queue() : &worker_queue();
  if (int e = setup_source(*r, spec); e < 0) return e;
  r->id = new_id();
  regs_.emplace(r->id, r);
  return r->id;
}

// ---------------------------------------------------------------------------
// Reactive jobs: run by the poller under mu_. Each turns what the kernel
// reports into occurrences of its registrations.

void Engine::on_ready(Source& s, uint32_t ev) {
  if (s.oneshot) s.armed = false;
  switch (s.kind) {
    case SrcKind::Wake: {
      uint64_t v;
      if (read(s.fd, &v, sizeof v) < 0) {
      }
      break;
    }
    case SrcKind::Timer:
      job_timer(s);
      break;
    case SrcKind::Fd:
      job_fd(s, ev);
      break;
    case SrcKind::Accept:
      job_accept(s);
      break;
    case SrcKind::Close:
      job_close(s);
      break;
    case SrcKind::Sk:
      job_sk(s);
      break;
    case SrcKind::Reader:
      job_read(s);
      break;
    case SrcKind::Child:
      job_child(s);
      break;
  }
}

void Engine::job_timer(Source& s) {
  uint64_t n = 0;
  if (read(s.fd, &n, sizeof n) != sizeof n || n == 0) return;
  Reg& r = *s.reg;
  r.st.activations += n;
  r.pending += n;
  touch_deadline(r);
  make_ready(r);
}

void Engine::job_fd(Source& s, uint32_t ev) {
  Reg& r = *s.reg;
  ++r.st.activations;
  ++r.pending;
  r.revents |= ev & kPollBits;
  touch_deadline(r);
  make_ready(r);
}

void Engine::job_accept(Source& s) {
  Reg& r = *s.reg;
  // The listening socket's O_NONBLOCK belongs to the application, so check
  // readiness before each accept instead of changing it.
  for (int i = 0; i < 64; ++i) {
    pollfd p{s.fd, POLLIN, 0};
    if (poll(&p, 1, 0) != 1 || !(p.revents & POLLIN)) break;
    Accepted a;
    a.len = sizeof a.addr;
    a.fd = accept4(s.fd, reinterpret_cast<sockaddr*>(&a.addr), &a.len, 0);
    if (a.fd < 0) {
      if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) continue;
      notice(r, -errno);  // e.g. EMFILE: the application decides
      break;
    }
    r.accepted.push_back(a);
    ++r.st.activations;
    ++r.pending;
  }
  touch_deadline(r);
  make_ready(r);
  arm(s);
}

void Engine::job_close(Source& s) {
  Reg& r = *s.reg;
  ++r.st.activations;
  ++r.pending;
  touch_deadline(r);
  make_ready(r);  // once: a closed socket does not re-open
}

void Engine::job_sk(Source& s) {
  Reg& r = *s.reg;
  int st = tcp_state_of(s.fd);
  if (st <= 0 || st == r.tcp_state) return;
  int old = r.tcp_state;
  r.tcp_state = st;
  if (!(r.events & (1u << st))) return;
  r.transitions.emplace_back(old, st);
  ++r.st.activations;
  ++r.pending;
  touch_deadline(r);
  make_ready(r);
}

void Engine::job_read(Source& s) {
  auto deliver = [&](Chunk* c) {
    if (c) c->refs = static_cast<int>(s.readers.size());
    for (Reg* r : s.readers) {
      r->chunks.push_back(c);
      if (c) r->chunk_bytes += c->len;
      ++r->st.activations;
      ++r->pending;
      touch_deadline(*r);
      make_ready(*r);
    }
  };
  for (int i = 0; i < 16; ++i) {
    int avail = 0;
    if (ioctl(s.fd, FIONREAD, &avail) < 0) avail = 0;
    // Never more than the arena can ever hold: a chunk that big would
    // wait for room forever.
    size_t most = user_alloc_.alloc ? kReadMax : std::min(kReadMax, arena_->capacity());
    size_t want = std::min<size_t>(avail > 0 ? static_cast<size_t>(avail) : 4096, most);
    Chunk* c = new_chunk(want);
    if (!c) {
      // No memory for event data (AEM-3.5.2): tell every reader, keep the
      // data in the socket, resume when memory is released.
      for (Reg* r : s.readers) notice(*r, -ENOMEM);
      s.paused = true;
      readers_want_memory_ = true;
      return;
    }
    ssize_t n = recv(s.fd, c->p, want, MSG_DONTWAIT);
    if (n > 0) {
      c->len = static_cast<size_t>(n);
#if AEM_MUTANT(lose_read_data)
      if (++s.mutant_chunks == 2) {  // MUTANT lose_read_data: the second chunk is dropped
        c->refs = 1;
        release_chunk(c);
        continue;
      }
#endif
      deliver(c);
      bool over = false;
      for (Reg* r : s.readers) over |= r->chunk_bytes > kReadCap;
      if (over) {
        s.paused = true;  // backpressure: TCP holds the rest
        return;
      }
      continue;
    }
    int e = errno;
    c->refs = 1;
    release_chunk(c);
    if (n < 0 && (e == EAGAIN || e == EINTR)) break;
    if (n < 0)
      for (Reg* r : s.readers) notice(*r, -e);
    s.eof = true;
    readers_.erase(std::tuple(s.dev, s.ino, s.app_fd));  // a new registration starts afresh
    deliver(nullptr);                                    // EOF, after all data
    return;
  }
  arm(s);
}

void Engine::job_child(Source& s) {
  siginfo_t si{};
  waitid(P_PID, static_cast<id_t>(s.child), &si, WEXITED | WNOHANG);
  release_chunk(s.chunk);
  s.chunk = nullptr;
  drop_source(s.token);
}

void Engine::expire_deadlines() {
  uint64_t now = now_ns();
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    int jid = deadlines_.begin()->second;
    Reg* r = find(jid);
    if (!r) {
      deadlines_.erase(deadlines_.begin());
      continue;
    }
    auto keep = r->shared_from_this();
    clean_locked(*r);
    notice(*r, -ETIMEDOUT);
  }
}

void Engine::poller_loop() {
  std::array<epoll_event, 64> evs{};
  std::unique_lock lk(mu_);
  int ep = epfd_;
  while (!stopping_) {
    int timeout = -1;
    if (!deadlines_.empty()) {
      uint64_t now = now_ns(), at = deadlines_.begin()->first;
      timeout = at <= now
                    ? 0
                    : static_cast<int>(std::min<uint64_t>((at - now + 999999) / 1000000, INT_MAX));
    }
    lk.unlock();
    int n = epoll_wait(ep, evs.data(), static_cast<int>(evs.size()), timeout);
    lk.lock();
    if (stopping_ || forked_) break;
    for (int i = 0; i < n; ++i) {
      auto it = sources_.find(evs[static_cast<size_t>(i)].data.u64);
      if (it != sources_.end()) on_ready(*it->second, evs[static_cast<size_t>(i)].events);
    }
    expire_deadlines();
    while (Reg* d = doomed_) {
      doomed_ = d->doomed_next;
      clean_locked(*d);
    }
    bury(lk);
  }
}

void Engine::worker_loop() {
  Entry entry;
  std::unique_lock lk(mu_);
  Queue& q = *wq_;
  q.tid = self_tid();
  errno = 0;
  q.base_nice = getpriority(PRIO_PROCESS, 0);
#if AEM_MUTANT(overlap)
  // MUTANT overlap: a twin thread serves this queue too, so two handlers of the
  // THREAD execution context run at once. Both wait 1 ms at most (one wake-up
  // may serve one of them only), so that each sees stopping_.
  std::thread twin([this, &q] {
    Entry e;
    std::unique_lock l(mu_);
    while (!stopping_ && !forked_)
      if (run_one(q, l) < 0) wait(q, l, 1);
  });
  const int wait_ms = 1;
#else
  const int wait_ms = -1;
#endif
  while (!stopping_ && !forked_) {
    if (run_one(q, lk) >= 0) continue;
    wait(q, lk, wait_ms);
  }
#if AEM_MUTANT(overlap)
  lk.unlock();
  twin.join();
#endif
}

// ---------------------------------------------------------------------------
// Delivery.

void Engine::rearm_after_delivery(Reg& r) {
  if (!r.token || r.pending) return;
  auto it = sources_.find(r.token);
  if (it == sources_.end()) return;
  Source& s = *it->second;
  if (s.kind == SrcKind::Fd && s.oneshot && !s.armed && r.enabled) arm(s);
  if (s.kind == SrcKind::Reader && s.paused && !readers_want_memory_ && !s.eof) {
    bool over = false;
    for (Reg* x : s.readers) over |= x->chunk_bytes > kReadCap;
    if (!over) {
      s.paused = false;
      arm(s);
    }
  }
}

int Engine::run_one(Queue& q, std::unique_lock<std::mutex>& lk) {
  if (!q.notices.empty()) {
    auto [jid, err] = q.notices.front();
    q.notices.pop_front();
    if (!err_handler_) return 0;
    q.busy = true;
    std::shared_ptr<ErrorHandler> h = err_handler_;
    lk.unlock();
    ++t_running;
    (*h)(jid, err);
    --t_running;
    lk.lock();  // h is not the last reference: err_handler_ or on_error() has one
    q.busy = false;
    return 1;
  }
  if (!q.bitmap) return -1;
  const auto lvl = static_cast<size_t>(63 - std::countl_zero(q.bitmap));
  Reg& r = *q.head[lvl];
  std::shared_ptr<Reg> hold = r.shared_from_this();
  q.running_prio = r.prio;  // first, so the boost holds through dequeue
  dequeue(r);

  // Build the delivery from the pending state.
  Event ev;
  ev.jid = r.id;
  ev.type = r.type;
  ev.fd = r.fd;
  Chunk* chunk = nullptr;
  Accepted acc;
  const bool per = (r.flags & AEM_PER_OCCURRENCE) != 0;
  uint64_t used = 1;
  switch (r.type) {
    case AEM_EV_ACCEPT:
      acc = r.accepted.front();
      r.accepted.pop_front();
      ev.new_fd = acc.fd;
      ev.addr = reinterpret_cast<const sockaddr*>(&acc.addr);
      ev.addrlen = acc.len;
      ev.count = 1;
      break;
    case AEM_EV_READ:
      chunk = r.chunks.front();
      r.chunks.pop_front();
      if (chunk) {
        r.chunk_bytes -= chunk->len;
        ev.data = chunk->p;
        ev.len = chunk->len;
      }
      ev.count = 1;
      break;
    case AEM_EV_SK:
      ev.old_state = r.transitions.front().first;
      ev.new_state = r.transitions.front().second;
      r.transitions.pop_front();
      ev.count = 1;
      break;
    case AEM_EV_SOFT:
      if (per) {
        ev.value = r.values.front();
        r.values.pop_front();
      } else {
        ev.value = r.value;
        used = r.pending;
      }
      ev.count = used;
      break;
    default:  // timer, fd, sock, close
      used = per ? 1 : r.pending;
      ev.count = used;
#if AEM_MUTANT(lose_timer_overruns)
      if (r.type == AEM_EV_TIMER) ev.count = 1;  // MUTANT lose_timer_overruns: consumed, not told
#endif
      ev.events = r.revents;
      if (!per || r.pending == 1) r.revents = 0;
      break;
  }
  r.pending -= used;
  ++r.st.deliveries;
  r.st.merged += used - 1;
  if (r.pending) make_ready(r);  // the rest, behind its peers (FIFO)
  drain_overflow();

  if (r.flags & AEM_ONESHOT) {
    // The id is invalid from here; this delivery goes on. Cleaning frees
    // memory, so inside the doorbell handler the poller does it.
    if (t_in_signal)
      doom(r);
    else
      clean_locked(r);
  }

  q.busy = true;
  r.running = true;
  r.runner = self_tid();
  if (r.exec == AEM_EXEC_PROCESS) {
    // A new process per activation; event data stays in the shared arena,
    // which the child sees at the same address (direct data copy).
    lk.unlock();
    pid_t pid = fork();
    if (pid == 0) {
      if (r.type == AEM_EV_ACCEPT && r.uaddr && r.uaddrlen) {
        socklen_t n = std::min(*r.uaddrlen, ev.addrlen);
        memcpy(r.uaddr, ev.addr, n);
        *r.uaddrlen = ev.addrlen;
      }
      ++t_running;
      r.invoke(ev);
      _exit(0);
    }
    int fork_err = pid < 0 ? errno : 0;
    lk.lock();
    if (r.type == AEM_EV_ACCEPT && acc.fd >= 0) close(acc.fd);  // the child owns it
    if (pid > 0) {
      int pfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
      auto s = std::make_unique<Source>();
      s->kind = SrcKind::Child;
      s->child = pid;
      s->chunk = chunk;
      s->fd = pfd;
      s->interest = EPOLLIN;
      chunk = nullptr;  // released when the child has exited
      Source& ref = *s;
      add_source(std::move(s));
      if (pfd < 0 || arm(ref) < 0) job_child(ref);
    } else {
      ++r.st.errors;
      q.notices.emplace_back(r.id, -fork_err);
    }
  } else {
    if (r.type == AEM_EV_ACCEPT && r.uaddr && r.uaddrlen) {
      socklen_t n = std::min(*r.uaddrlen, ev.addrlen);
      memcpy(r.uaddr, ev.addr, n);
      *r.uaddrlen = ev.addrlen;
    }
    lk.unlock();
    ++t_running;
    r.invoke(ev);
    --t_running;
    lk.lock();
  }
  r.running = false;
  q.busy = false;
  q.running_prio = -1;
  release_chunk(chunk);
  if (r.live) rearm_after_delivery(r);
  update_boost(q);
  cv_.notify_all();
  hold.reset();  // not the last reference: a cleaned one is in graveyard_
  bury(lk);
  return 1;
}

int Engine::wait(Queue& q, std::unique_lock<std::mutex>& lk, int timeout_ms) {
  q.waiting = true;
  lk.unlock();
  pollfd p{q.wakefd, POLLIN, 0};
  timespec ts{}, *tsp = nullptr;
  if (timeout_ms >= 0) {
    ts.tv_sec = timeout_ms / 1000;
    ts.tv_nsec = (timeout_ms % 1000) * 1000000L;
    tsp = &ts;
  }
  // The doorbell is blocked while waiting: the wake eventfd serves then, and
  // only the application's signals interrupt the wait.
  sigset_t mask;
  pthread_sigmask(SIG_SETMASK, nullptr, &mask);
  sigaddset(&mask, doorbell_signal());
  int n = ppoll(&p, 1, tsp, &mask);
  int e = errno;
  if (n > 0) {
    uint64_t v;
    if (read(q.wakefd, &v, sizeof v) < 0) {
    }
  }
  lk.lock();
  q.waiting = false;
  return n < 0 ? -e : n;
}

int Engine::dispatch(int timeout_ms) {
  Entry entry;
  if (t_running) return -EDEADLK;
  if (timeout_ms < -1) return -EINVAL;
  check_fork();
  std::unique_lock lk(mu_);
  Queue& q = own_queue();
  const uint64_t deadline = timeout_ms > 0 ? now_ns() + uint64_t(timeout_ms) * 1000000ull : 0;
  int ran = 0;
  for (;;) {
    int r;
    while (ran < kDispatchBatch && (r = run_one(q, lk)) >= 0) ran += r;
    if (ran > 0 || timeout_ms == 0) return ran;
    int left = -1;
    if (timeout_ms > 0) {
      uint64_t now = now_ns();
      if (now >= deadline) return 0;
      left = static_cast<int>((deadline - now + 999999) / 1000000);
    }
    if (!q.notices.empty() || q.bitmap) continue;
    int w = wait(q, lk, left);
    if (w == -EINTR) return -EINTR;
  }
}

int Engine::keepalive() {
  Entry entry;
  if (t_running) return -EDEADLK;
  check_fork();
  std::unique_lock lk(mu_);
  Queue& q = own_queue();
  ++keepalive_count_;
  int rc = 0;
  for (;;) {
    if (stop_requested_) break;
    if (run_one(q, lk) >= 0) continue;
    if (wait(q, lk, -1) == -EINTR) {
      rc = -EINTR;
      break;
    }
  }
  if (--keepalive_count_ == 0) stop_requested_ = false;
  return rc;
}

void Engine::stop() {
  Entry entry;
  std::lock_guard lk(mu_);
  stop_requested_ = true;
  uint64_t one = 1;
  for (auto& [t, q] : queues_)
    if (q->waiting && write(q->wakefd, &one, sizeof one) < 0) {
    }
}

// ---------------------------------------------------------------------------
// Control.

int Engine::raise(int jid, uint64_t value) {
  Entry entry;
  check_fork();
  if (jid <= 0) return -EINVAL;
  std::lock_guard lk(mu_);
  Reg* r = find(jid);
  if (!r) return -ENOENT;
  if (r->type != AEM_EV_SOFT) return -EINVAL;
  ++r->st.activations;
#if AEM_MUTANT(drop_occurrence)
  // MUTANT drop_occurrence: one raise in a thousand is counted, never queued.
  if (++r->mutant_raises % 1000 == 0) return 0;
#endif
  ++r->pending;
  r->value = value;
  if (r->flags & AEM_PER_OCCURRENCE) r->values.push_back(value);
  touch_deadline(*r);
  make_ready(*r);
  return 0;
}

void Engine::clean_locked(Reg& r) {
  if (!r.live) return;
  r.live = false;
  dequeue(r);
  if (r.has_deadline) {
    deadlines_.erase(r.deadline);
    r.has_deadline = false;
  }
  if (r.token) {
    auto it = sources_.find(r.token);
    if (it != sources_.end() && it->second->kind == SrcKind::Reader) {
      auto& v = it->second->readers;
      v.erase(std::remove(v.begin(), v.end(), &r), v.end());
      if (v.empty()) drop_source(r.token);
    } else {
      drop_source(r.token);
    }
    r.token = 0;
  }
  r.accepted.for_each([](Accepted& a) { close(a.fd); });
  r.accepted.clear();
  r.chunks.for_each([this](Chunk* c) { release_chunk(c); });
  r.chunks.clear();
  r.chunk_bytes = 0;
  r.values.clear();
  r.transitions.clear();
  r.pending = 0;
  graveyard_.push_back(r.shared_from_this());
  regs_.erase(r.id);
  drain_overflow();
}

void Engine::bury(std::unique_lock<std::mutex>& lk) {
  if (graveyard_.empty() || t_in_signal) return;  // never free in a signal handler
  std::vector<std::shared_ptr<Reg>> dead;
  dead.swap(graveyard_);
  lk.unlock();
  dead.clear();
  lk.lock();
}

int Engine::ctl(int jid, unsigned int op, unsigned long arg) {
  Entry entry;
  check_fork();
  if (jid <= 0 || op < 1 || op > AEM_CTL_MAX) return -EINVAL;
  std::unique_lock lk(mu_);
  Reg* rp = find(jid);
  if (!rp) return -ENOENT;
  Reg& r = *rp;
  switch (op) {
    case AEM_CTL_ENABLE:
      if (arg) return -EINVAL;
      r.enabled = true;
      make_ready(r);
      rearm_after_delivery(r);
      return 0;
    case AEM_CTL_DISABLE:
      if (arg) return -EINVAL;
      r.enabled = false;
      dequeue(r);  // held, still counted
      drain_overflow();
      return 0;
    case AEM_CTL_FILTER: {
      if (r.type == AEM_EV_FD || r.type == AEM_EV_SOCK) {
        if (!arg || (arg & ~static_cast<unsigned long>(kPollBits))) return -EINVAL;
        r.events = static_cast<unsigned>(arg);
        Source& s = *sources_.at(r.token);
        s.interest = r.events | (r.edge ? EPOLLET : 0u);
        if (s.armed) arm(s);  // a disarmed oneshot takes it when re-armed
        return 0;
      }
      if (r.type == AEM_EV_SK) {
        if (!arg || (arg & ~static_cast<unsigned long>(kTcpStateMask))) return -EINVAL;
        r.events = static_cast<unsigned>(arg);
        return 0;
      }
      return -EINVAL;
    }
    case AEM_CTL_LOOKUP: {
      if (!arg) return -EINVAL;
      auto* info = reinterpret_cast<aem_event_info*>(arg);
      *info = aem_event_info{};
      info->jid = r.id;
      info->type = r.type;
      info->fd = r.fd;
      info->prio = r.prio;
      info->enabled = r.enabled ? 1 : 0;
      info->flags = static_cast<unsigned long>(r.flags);
      info->events = r.events;
      info->executor = static_cast<int>(r.exec);
      info->pending = r.pending;
      return 0;
    }
    case AEM_CTL_SET_TIMEOUT:
      if (arg > static_cast<unsigned long>(INT_MAX)) return -EINVAL;
      r.timeout_ms = arg;
      touch_deadline(r);
      return 0;
    case AEM_CTL_SET_PRIO: {
      if (arg > static_cast<unsigned long>(AEM_PRIO_MAX)) return -EINVAL;
      const bool was = r.queued || r.overflowed;
      dequeue(r);
      r.prio = static_cast<int>(arg);
      if (was) make_ready(r);  // queued again, or held again by the limit
      update_boost(*r.q);
      return 0;
    }
    case AEM_CTL_CLEAN: {
      if (arg) return -EINVAL;
      auto hold = r.shared_from_this();
      clean_locked(r);
      r.q->notices.erase_if([&](const auto& x) { return x.first == jid; });
      // When it returns, the handler is not running elsewhere (a handler
      // may clean itself).
      cv_.wait(lk, [&] { return !r.running || r.runner == self_tid(); });
      bury(lk);
      return 0;
    }
    case AEM_CTL_STATS: {
      if (!arg) return -EINVAL;
      auto* st = reinterpret_cast<aem_event_stats*>(arg);
      *st = r.st;
      st->pending = r.pending;
      return 0;
    }
  }
  return -EINVAL;
}

void Engine::on_error(ErrorHandler handler) {
  Entry entry;
  auto next = handler ? std::make_shared<ErrorHandler>(std::move(handler)) : nullptr;
  std::unique_lock lk(mu_);
  err_handler_.swap(next);
  lk.unlock();  // the old one is destroyed here, outside mu_
}

void Engine::set_allocator(const Allocator& a) {
  Entry entry;
  std::lock_guard lk(mu_);
  user_alloc_ = a;
  if (readers_want_memory_) resume_readers();  // another source of memory: retry
}

// ---------------------------------------------------------------------------
// Asynchronous delivery: the doorbell.

int Engine::set_async(int on) {
  Entry entry;
  if (on != 0 && on != 1) return -EINVAL;
  check_fork();
  if (on) install_doorbell();
  std::lock_guard lk(mu_);
  Queue& q = own_queue();
  q.async = on != 0;
  if (q.async && (q.bitmap || !q.notices.empty()) && !q.bell.exchange(true))
    tgkill(getpid(), q.tid, doorbell_signal());
  return 0;
}

void Engine::run_async_here() {
  Entry entry;
  if (t_running) return;  // never inside a handler of this thread
  std::unique_lock lk(mu_);
  auto it = queues_.find(self_tid());
  if (it == queues_.end() || !it->second->async) return;
  Queue& q = *it->second;
  q.bell.store(false);
  for (int i = 0; i < kDispatchBatch && run_one(q, lk) >= 0; ++i) {
  }
}

void run_deferred_async() {
  t_deferred = 0;
  for (auto& slot : g_engines)
    if (Engine* e = slot.load()) e->run_async_here();
}

void doorbell_handler(int, siginfo_t*, void*) {
  int saved = errno;
  if (t_depth > 0) {
    t_deferred = 1;
  } else {
    t_in_signal = true;
    run_deferred_async();
    t_in_signal = false;
  }
  errno = saved;
}

void install_doorbell() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_sigaction = doorbell_handler;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(doorbell_signal(), &sa, nullptr);
  });
}

// ---------------------------------------------------------------------------
// Fork (AEM-3.6.4): registrations with AEM_INHERIT go on in the child with
// their own kernel objects; the others are gone. Pending occurrences stay
// with the parent, which delivers them.

// The doorbell handler must not run on this thread while it holds the
// engines' locks: glibc delivers a doorbell that came during the fork
// system call as soon as fork() unblocks signals, before the parent
// handler, and run_async_here() would wait for the mu_ this thread holds.
// The depth defers it (the handler sees t_depth > 0) to atfork_parent().
void atfork_prepare() {
  ++t_depth;
  for (auto& slot : g_engines)
    if (Engine* e = slot.load()) e->mu_.lock();
}

void atfork_parent() {
  for (auto& slot : g_engines)
    if (Engine* e = slot.load()) e->mu_.unlock();
  if (--t_depth == 0 && t_deferred) run_deferred_async();
}

void atfork_child() {
  t_tid = 0;
  for (auto& slot : g_engines) {
    if (Engine* e = slot.load()) {
      e->forked_.store(true);
      e->mu_.unlock();
    }
  }
  --t_depth;
  t_deferred = 0;  // the parent's doorbell
}

void Engine::check_fork() {
  if (!forked_.load(std::memory_order_relaxed)) return;
  std::lock_guard lk(mu_);
  if (forked_.load()) rebuild_child();
}

// In a forked child, before anything else: let go of what belongs to the
// parent without touching it.
void Engine::forget_parent() {
  forked_.store(false);
  // The parent's threads do not exist here: forget their handles.
  (void)poller_.release();
  (void)worker_.release();
  // The epoll set is the parent's: not one epoll_ctl() on it from here.
  close(epfd_);
  epfd_ = -1;
  for (auto& [t, src] : sources_) src->added = src->armed = false;
  readers_want_memory_ = false;
  // The arena is shared with the parent: never write its free lists again
  // (release_chunk() skips a chunk of another arena); keep it mapped.
  old_arenas_.push_back(std::move(arena_));
}

void Engine::rebuild_child() {
  forget_parent();
  arena_ = std::make_unique<Arena>(policy_.arena_bytes);
  while (Reg* d = doomed_) {  // the parent's poller had not cleaned them yet
    doomed_ = d->doomed_next;
    clean_locked(*d);
  }
  std::vector<std::shared_ptr<Reg>> keep;
  std::vector<std::shared_ptr<Reg>> drop;
  for (auto& [id, r] : regs_) ((r->flags & AEM_INHERIT) ? keep : drop).push_back(r);
  // Pending data is the parent's to deliver: the child closes its copies of
  // accepted fds and drops its references to the chunks.
  for (auto& r : drop) clean_locked(*r);
  std::unordered_map<uint64_t, std::unique_ptr<Source>> old;
  old.swap(sources_);
  readers_.clear();
  for (auto& [t, q] : queues_) close(q->wakefd);
  queues_.clear();
  if (wq_) close(wq_->wakefd);
  wq_.reset();
  npending_ = 0;
  ov_head_ = ov_tail_ = nullptr;
  overloaded_ = false;
  readers_want_memory_ = false;
  keepalive_count_ = 0;
  stop_requested_ = false;
  for (auto& [t, s] : old)
    if (s->kind == SrcKind::Wake || s->kind == SrcKind::Child) close(s->fd);
  if (start_threads() < 0) return;
  for (auto& r : keep) {
    r->queued = r->overflowed = r->running = false;
    r->prev = r->next = nullptr;
    r->pending = 0;
    r->revents = 0;
    r->values.clear();
    r->accepted.for_each([](Accepted& a) { close(a.fd); });
    r->accepted.clear();
    r->chunks.for_each([this](Chunk* c) { release_chunk(c); });
    r->chunks.clear();
    r->chunk_bytes = 0;
    r->transitions.clear();
    r->q = r->exec == AEM_EXEC_SAME ? &own_queue() : &worker_queue();
    auto it = old.find(r->token);
    if (it == old.end()) continue;
    std::unique_ptr<Source> s = std::move(it->second);
    old.erase(it);
    if (s->kind == SrcKind::Timer) {
      itimerspec cur{};
      timerfd_gettime(s->fd, &cur);
      close(s->fd);
      s->fd = timerfd_create(s->clock, TFD_NONBLOCK | TFD_CLOEXEC);
      // A periodic timer due right now reads as 0 remaining, and a zero
      // value would disarm the new one: due now means 1 ns from now.
      if (!cur.it_value.tv_sec && !cur.it_value.tv_nsec &&
          (cur.it_interval.tv_sec || cur.it_interval.tv_nsec))
        cur.it_value.tv_nsec = 1;
      timerfd_settime(s->fd, 0, &cur, nullptr);
    }
    if (s->kind == SrcKind::Reader) {
      std::vector<Reg*> rs;
      for (Reg* x : s->readers)
        if (x->flags & AEM_INHERIT) rs.push_back(x);
      s->readers = rs;
      for (Reg* x : rs) x->token = r->token;
    }
    s->paused = false;
    const uint64_t t = add_source(std::move(s));
    for (auto& k : keep)
      if (k->token == r->token && k.get() != r.get()) k->token = t;
    r->token = t;
    Source& src = *sources_[t];
    if (src.kind == SrcKind::Reader) readers_.emplace(std::tuple(src.dev, src.ino, src.app_fd), t);
    if (!src.eof) arm(src);
  }
  for (auto& [t, s] : old)
    if (s->kind != SrcKind::Wake && s->kind != SrcKind::Child && s->fd >= 0) close(s->fd);
}

}  // namespace

bool in_handler() { return t_running > 0 || kmod_in_handler(); }

std::unique_ptr<Backend> make_user_backend(const Policy& policy, int& err) {
  auto e = std::make_unique<Engine>(policy);
  err = e->init();
  if (err < 0) return nullptr;
  return e;
}

}  // namespace aem::detail
