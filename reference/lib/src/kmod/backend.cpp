// SPDX-License-Identifier: MIT
// The kernel backend: the AEM model (DESIGN §3) on /dev/aem (reference/kmod).
//
// The kernel owns what can be done without user space: registration ids,
// the priority queue, occurrence counting and merging, timers (hrtimer),
// software events, fd readiness (edge/level), limits, timeouts and the
// overload notice. This backend maps each family's Spec onto
// AEM_IOC_REGISTER (user_data = the library's id of the record), takes
// deliveries from the context's completion ring (or with AEM_IOC_WAIT),
// runs the handlers and maps evctl onto AEM_IOC_CTL, evsoft_raise onto
// AEM_IOC_RAISE.
//
// Families the kernel does not have yet (the socket families: accept,
// read, close, sk, sock) are -EOPNOTSUPP here: see add().
//
// Structure
//   Core       one AEM context = one open of /dev/aem (O_CLOEXEC). The
//              public Backend object (KmodBackend) only holds a shared_ptr
//              to it, so a context released from inside one of its own
//              handlers lives until that handler has returned.
//   Rec        one registration: its handler, what it was registered with
//              (to register it again in a forked child), and the
//              deliveries pulled from the kernel but not yet run (merged
//              into a count, like the kernel does), with an embedded queue
//              link: routing a delivery never allocates.
//   Queue      one execution context: a registering thread (EXEC_SAME) or
//              the worker thread (EXEC_THREAD, EXEC_PROCESS). A priority
//              queue of records with pulled deliveries (bitmap + FIFO per
//              level) and a list of error notices. Exactly one thread
//              serves a queue, so handlers of one execution context never
//              overlap.
//
// Delivery
//   The kernel has one queue per context; the library has one per
//   execution context. Whoever needs work (a thread in aem_dispatch() or
//   enter_keepalive(), the doorbell handler, the worker) pulls before each
//   handler, routes every delivery to its record's queue (waking that
//   queue's thread), then runs the most urgent entry of its own queue.
//   A pull takes everything in the completion ring, which the kernel
//   fills as events activate (no system call), and makes one
//   AEM_IOC_WAIT(AEM_WAIT_REFILL) only when the ring header says that
//   deliveries wait in the kernel (backlog: the ring was full, a
//   level-triggered source is due for its re-check, or a boosting delivery
//   waits for the consumer), or to end a boost it holds. Without a ring
//   (AEM_KMOD_RING=0, or RLIMIT_MEMLOCK too low) it pulls with
//   AEM_IOC_WAIT(timeout 0) until it has pulled something of its own or
//   the kernel is empty. Either way, what is still in the kernel for a
//   queue is never more urgent than what was pulled for it (the kernel
//   pops in priority order, and everything it moved to the ring is taken),
//   so each queue runs in strict priority order, FIFO within a level.
//   Waiting is poll() on the context fd (readable while something is
//   pending or the ring is not empty) and the queue's wake eventfd, never
//   AEM_IOC_WAIT with a timeout, so no lock is held while sleeping. With a
//   ring, a thread first watches it for AEM_KMOD_SPIN_US (spin()): under a
//   sustained stream the next delivery arrives before a sleep would end.
//
// The ring (memory ordering, the kernel's side in reference/kmod/aem_ring.c)
//   The kernel writes entries, then store-releases tail; pull_ring()
//   load-acquires tail, copies the entries before it, then store-releases
//   head, so the kernel never overwrites an entry being read. Only this
//   library writes head, under mu_, so its own value needs no atomics.
//   Doorbell (Dekker): the kernel publishes tail, then exchanges the
//   header's doorbell to 1 and signals on 0 -> 1; the pull that empties the
//   ring stores 0 (seq_cst), then reads tail and backlog again before it
//   reports the kernel empty.
//
// Threads
//   worker     one per context, started on the first THREAD or PROCESS
//              registration: serves the worker queue, forks the PROCESS
//              children and reaps them (pidfds in its poll set).
//   owners     a thread that registered EXEC_SAME events serves its queue
//              in aem_dispatch()/enter_keepalive(), or, after
//              aem_set_async(1), from the doorbell signal handler: the
//              kernel signals the thread given to AEM_IOC_SET_SIGNAL (the
//              last one that turned async on), which drains the kernel
//              until the kernel is empty (that re-arms the doorbell);
//              deliveries for another async thread are passed on with
//              tgkill().
//
// Locking
//   Core::mu_ protects every field of the core, its records and queues. It
//   is one lock, never nested, never held while a handler, an error
//   handler or a blocking wait runs. Every ioctl but a merged raise is made
//   under mu_ (none of them sleeps: AEM_IOC_WAIT always has timeout 0), so
//   pulls and routing are ordered the way the kernel popped; a merged
//   raise changes no library state and makes its ioctl after dropping mu_,
//   counted in inflight_, which keeps fd_ open. Lock order: mu_ -> the
//   kernel's ctx->mutex. The doorbell handler takes mu_ only when its thread is
//   outside this backend (k_depth == 0); otherwise it defers to the moment
//   the thread leaves it (Entry's destructor). Inside the signal handler
//   nothing is allocated or freed: routing links embedded nodes, cleaned
//   records go on an intrusive list (doomed_) and are destroyed later by
//   reap(), outside the handler and with mu_ released (their handlers may
//   own registrations of this context whose destructors call back). cv_
//   (with mu_) wakes AEM_CTL_CLEAN callers waiting for a handler running in
//   another thread.
//   Fork: pthread_atfork's prepare takes every core's mu_; the child then
//   opens a fresh context on its first call and registers the AEM_INHERIT
//   records again (the kernel does not implement inheritance), with the
//   ids the application knows: the library's ids are its own, mapped to
//   the kernel's.
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
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
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "backend.hpp"
#include "kmod/kmod.hpp"
#include "thread_start.hpp"

namespace aem::detail {
namespace {

constexpr int kDispatchBatch = 4096;  // handlers per aem_dispatch() call
constexpr unsigned kPullMax = 16;     // deliveries per AEM_IOC_WAIT
constexpr size_t kMaxCores = 64;
constexpr size_t kItemRoom = 256;              // socket items a record holds before growing
constexpr uint64_t kGroupTag = uint64_t{1} << 40;  // user_data of a shared reader
constexpr const char* kDevice = "/dev/aem";

// Thread-local state. k_depth counts nested entries into this backend on
// this thread; k_running counts handlers running on it; k_in_signal is set
// while the doorbell handler delivers, where nothing may allocate or free.
thread_local int k_depth = 0;
thread_local int k_running = 0;
thread_local volatile sig_atomic_t k_deferred = 0;
thread_local bool k_in_signal = false;
thread_local pid_t k_tid = 0;  // forgotten in a forked child

pid_t self_tid() {
  if (k_tid == 0) k_tid = gettid();
  return k_tid;
}

// The doorbell: not the user backend's (SIGRTMAX - 1), so both can live in
// one process. glibc's SIGRTMAX is the kernel's (64).
int doorbell_signal() { return SIGRTMAX - 2; }

// A spin-wait hint: lets the sibling hyper-thread run, saves power.
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
  asm volatile("yield" ::: "memory");
#endif
}

uint64_t now_ns(clockid_t c) {
  timespec ts;
  clock_gettime(c, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

int64_t ts_ns(const timespec& t) {
  constexpr int64_t kBillion = 1000000000;
  if (t.tv_sec > (INT64_MAX - t.tv_nsec) / kBillion) return INT64_MAX;
  return static_cast<int64_t>(t.tv_sec) * kBillion + t.tv_nsec;
}

bool has_items(int type) {
  return type == AEM_EV_ACCEPT || type == AEM_EV_READ || type == AEM_EV_SK;
}

class Core;
std::array<std::atomic<Core*>, kMaxCores> g_cores{};
void run_deferred_async();

// Every entry point holds one: the doorbell handler defers while the
// thread is inside this backend, and runs what it deferred on the way out.
struct Entry {
  Entry() { ++k_depth; }
  ~Entry() {
    if (--k_depth == 0 && k_deferred) run_deferred_async();
  }
  Entry(const Entry&) = delete;
  Entry& operator=(const Entry&) = delete;
};

// Values of a per-occurrence software event, in raise order. Grows on
// push (evsoft_raise); pop and clear never free (they may run inside the
// doorbell handler).
class ValueRing {
 public:
  size_t size() const { return n_; }
  void push_back(uint64_t v) {
    if (n_ == buf_.size()) {
      std::vector<uint64_t> nb(std::max<size_t>(8, buf_.size() * 2));
      for (size_t i = 0; i < n_; ++i) nb[i] = buf_[(head_ + i) % buf_.size()];
      buf_.swap(nb);
      head_ = 0;
    }
    buf_[(head_ + n_) % buf_.size()] = v;
    ++n_;
  }
  uint64_t pop_front() {
    uint64_t v = buf_[head_];
    head_ = (head_ + 1) % buf_.size();
    --n_;
    return v;
  }
  void pop_back() { --n_; }
  void clear() { head_ = n_ = 0; }

 private:
  std::vector<uint64_t> buf_;
  size_t head_ = 0;
  size_t n_ = 0;
};

// Socket event data pulled from the kernel, one per delivery: accept (a:
// the new fd), read (a: arena offset, b: length, 0 for EOF), sk (a: old,
// b: new state). Grows only outside the doorbell handler (see pull()).
struct Item {
  uint64_t a = 0;
  uint64_t b = 0;
};

class ItemRing {
 public:
  size_t size() const { return n_; }
  size_t room() const { return buf_.size() - n_; }
  void reserve(size_t want) {
    if (buf_.size() >= want) return;
    std::vector<Item> nb(std::max(want, buf_.size() * 2));
    for (size_t i = 0; i < n_; ++i) nb[i] = buf_[(head_ + i) % buf_.size()];
    buf_.swap(nb);
    head_ = 0;
  }
  void push_back(const Item& v) {  // room() > 0, or outside the doorbell handler
    if (n_ == buf_.size()) reserve(std::max<size_t>(8, buf_.size() * 2));
    buf_[(head_ + n_) % buf_.size()] = v;
    ++n_;
  }
  const Item& front() const { return buf_[head_]; }
  Item pop_front() {
    Item v = buf_[head_];
    head_ = (head_ + 1) % buf_.size();
    --n_;
    return v;
  }
  void clear() { head_ = n_ = 0; }

 private:
  std::vector<Item> buf_;
  size_t head_ = 0;
  size_t n_ = 0;
};

struct Queue;
struct ReadGroup;

struct Rec : std::enable_shared_from_this<Rec> {
  int id = 0;   // the library's id: what the application sees
  int kid = 0;  // the kernel's id in the current context
  int type = 0;
  uint32_t flags = 0;  // as given at registration
  int prio = AEM_PRIO_DEFAULT;
  unsigned exec = AEM_EXEC_SAME;
  int fd = -1;          // the application's fd (fd and socket families)
  unsigned events = 0;  // fd, sock: the current filter; sk: TCP states
  Invoker invoke;
  Queue* q = nullptr;
  sockaddr* uaddr = nullptr;  // accept: where the peer address goes
  socklen_t* uaddrlen = nullptr;
  ReadGroup* grp = nullptr;  // read: the socket's shared reader

  // What it was registered with, to register it again after fork().
  clockid_t clock = CLOCK_MONOTONIC;
  int64_t start_ns = 0;   // timer: first expiry, absolute on clock
  int64_t period_ns = 0;  // timer: 0 one-shot
  uint64_t timeout_ms = 0;

  bool enabled = true;
  std::atomic<bool> gone{false};  // the id is invalid (cleaned, or final delivery pulled)
  bool retired = false;     // on the doomed list, waiting for reap()
  bool final_seen = false;  // the kernel's final delivery was pulled
  bool err_final = false;   // the notice is the kernel's final error
  bool queued = false;      // linked in q's level FIFO
  bool noticed = false;     // linked in q's notice list
  bool running = false;     // its handler (or error handler) runs now
  bool maybe_stale = false;  // level fd: pulled while running or pending
  pid_t runner = 0;
  Rec* prev = nullptr;  // level FIFO
  Rec* next = nullptr;
  Rec* nnext = nullptr;  // notice list
  Rec* dnext = nullptr;  // doomed list

  // Pulled from the kernel, not yet run.
  uint64_t pending = 0;
  uint64_t value = 0;     // soft: latest value
  unsigned revents = 0;   // fd: merged readiness
  ValueRing values;       // soft, per occurrence: values in raise order
  ItemRing items;         // accept, read, sk: one per delivery
  bool stalled = false;   // read: the application's allocator failed
  int error = 0;          // notice to deliver

  // Library-side statistics (the kernel counts activations).
  uint64_t runs = 0;     // handler calls
  uint64_t run_occ = 0;  // occurrences those calls carried
  uint64_t lib_errors = 0;
};

struct Queue {
  pid_t tid = 0;
  bool worker = false;
  uint64_t bitmap = 0;
  std::array<Rec*, AEM_PRIO_LEVELS> head{};
  std::array<Rec*, AEM_PRIO_LEVELS> tail{};
  Rec* nhead = nullptr;  // error notices
  Rec* ntail = nullptr;
  uint64_t overload = 0;  // overload notifications to report (id 0)
  int wakefd = -1;
  bool waiting = false;
  bool async = false;
  bool busy = false;
  bool undrained = false;   // it left the kernel with deliveries (see dispatch)
  bool boost_held = false;  // its refill took a boosting delivery: ends with an ioctl
  std::atomic<bool> spinning{false};  // its thread watches the ring before sleeping
  std::atomic<bool> poked{false};     // meanwhile, another thread routed work to it
  std::atomic<bool> bell{false};
};

struct Child {
  pid_t pid = 0;
  int pidfd = -1;
  int64_t chunk = -1;  // arena offset the child reads, released when it exited
};

// One kernel AEM_EV_READ registration per socket, shared by every read
// registration on it (dispatching, AEM-3.6.5): the kernel reads each
// chunk once into the arena, every reader gets it (a reference count per
// chunk), then EOF. A new registration after EOF starts a new reader.
struct ReadGroup {
  int gid = 0;
  int kid = 0;
  int fd = -1;
  dev_t dev = 0;
  ino_t ino = 0;
  bool eof = false;
  bool dead = false;  // cleaned in the kernel; erased by reap()
  std::vector<Rec*> recs;
};

int xioctl(int fd, unsigned long req, void* arg) {
  int r;
  do r = ioctl(fd, req, arg);
  while (r < 0 && errno == EINTR);
  return r < 0 ? -errno : r;
}

void install_doorbell();
void atfork_prepare();
void atfork_parent();
void atfork_child();

class Core : public std::enable_shared_from_this<Core> {
 public:
  Core(const Policy& p) : policy_(p) {}
  ~Core() {
    shutdown();
    // Closed only now: a thread woken by shutdown() may still read its own.
    for (auto& [t, q] : queues_)
      if (q->wakefd >= 0) close(q->wakefd);
    if (wq_ && wq_->wakefd >= 0) close(wq_->wakefd);
  }

  int init(std::string& why);
  int add(Spec&& spec);
  int raise(int jid, uint64_t value);
  int raise_into_final(int jid, uint64_t value);
  int ctl(int jid, unsigned int op, unsigned long arg);
  int dispatch(int timeout_ms);
  int keepalive();
  void stop();
  int set_async(int on);
  void on_error(ErrorHandler handler);
  void set_allocator(const Allocator& a);
  int shutdown();

  void run_async_here();
  std::mutex mu_;
  // Raises whose ioctl runs without mu_; fd_ is closed only when none is
  // (close_fd()), and none starts once raise_fd_ is -1. Zero in a forked
  // child.
  std::atomic<int> inflight_{0};
  std::atomic<int> raise_fd_{-1};  // fd_, for raise()'s path without mu_
  // regs_'s map (not its records' state): written with mu_ and this held,
  // read by raise() with this alone, shared.
  std::shared_mutex regs_mu_;
  std::atomic<bool> forked_{false};
  // Threads watching the ring without mu_ (spin()); zero in a forked child.
  std::atomic<int> spinners_{0};
  std::atomic<bool> spin_stop_{false};

 private:
  // Under mu_.
  Queue& own_queue();
  Queue& worker_queue();
  void enqueue(Rec& r);
  void dequeue(Rec& r);
  void wake(Queue& q);
  void notice(Rec& r, int err);
  void unnotice(Rec& r);
  void mark_gone(Rec& r);
  void retire(Rec& r);
  void reap(std::unique_lock<std::mutex>& lk);
  int pull(Queue& self, bool until_mine);
  int pull_ring(Queue& self);
  bool room_for_pull(Queue& self);
  void setup_ring(std::string& why, int& err);
  bool route(const aem_delivery& d, Queue& self);
  // 1: a handler ran; 0: an entry was consumed without one; -1: empty.
  int run_one(Queue& q, std::unique_lock<std::mutex>& lk);
  int run_error(Queue& q, int jid, int err, Rec* r, std::unique_lock<std::mutex>& lk);
  int wait(Queue& q, std::unique_lock<std::mutex>& lk, int timeout_ms);
  bool spin(Queue& q, std::unique_lock<std::mutex>& lk);
  bool interrupt(Queue& q);
  int kreg(Rec& r, uint32_t kflags, int64_t value_ns, uint64_t user_data = 0);
  int kctl(const Rec& r, unsigned op, uint64_t arg);
  void set_doorbell(pid_t tid);
  void close_fd();
  int ensure_arena();
  void arena_ref(uint64_t off, int refs);
  void arena_release(uint64_t off);
  int read_join(Rec& r);
  void read_leave(Rec& r);
  bool route_read(const aem_delivery& d, Queue& self);
  void drop_items(Rec& r);
  bool items_room() const;
  void check_fork();
  void rebuild_child();
  void forget_parent();
  void worker_loop();
  void reap_children(bool block);
  int new_id();
  Rec* find(int jid);

  Policy policy_;
  int slot_ = -1;
  int fd_ = -1;
  int open_err_ = 0;  // after fork: the new context could not be opened
  aem_info info_{};
  bool stopping_ = false;
  std::unique_ptr<std::thread> worker_;
  std::condition_variable cv_;
  std::shared_ptr<ErrorHandler> err_handler_;  // copied without allocating
  std::unordered_map<int, std::shared_ptr<Rec>> regs_;
  size_t nlive_ = 0;
  int next_id_ = 1;
  std::unordered_map<pid_t, std::unique_ptr<Queue>> queues_;
  std::unique_ptr<Queue> wq_;
  std::vector<Child> children_;  // PROCESS executor children (worker only)
  Rec* doomed_ = nullptr;
  pid_t sig_tid_ = 0;  // the doorbell's thread, 0: none
  // The completion ring (AEM_IOC_RING_SETUP), mapped shared; null: pulls
  // use AEM_IOC_WAIT. Not inherited by fork() (VM_DONTCOPY).
  aem_ring_hdr* ring_ = nullptr;
  const aem_delivery* ring_ents_ = nullptr;
  uint32_t ring_mask_ = 0;
  size_t ring_bytes_ = 0;
  // The data arena (kernel memory mapped read-only, AEM_IOC_ARENA_SETUP),
  // created with the first read registration.
  const uint8_t* arena_ = nullptr;
  size_t arena_size_ = 0;
  uint32_t arena_block_ = 0;
  std::vector<uint16_t> arena_refs_;  // readers yet to run, per chunk's first block
  Allocator user_alloc_;              // the application's, if set
  std::unordered_map<int, std::unique_ptr<ReadGroup>> groups_;
  int next_gid_ = 1;
  std::vector<Rec*> sock_recs_;  // records with items (accept, read, sk)
  bool items_full_ = false;      // the doorbell handler stopped pulling: no room
  bool stop_requested_ = false;
  int keepalive_count_ = 0;
};

// ---------------------------------------------------------------------------
// Set-up and teardown.

int Core::init(std::string& why) {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); });
  fd_ = open(kDevice, O_RDWR | O_CLOEXEC);
  raise_fd_.store(fd_);
  if (fd_ < 0) {
    int e = errno;
    if (e == ENOENT) {  // no module loaded: the same error as the C API's
      why = std::string("the kernel backend needs ") + kDevice +
            ", which does not exist: load the aem kernel module (reference/kmod) or use the "
            "user backend";
      return -ENODEV;
    }
    why = std::string("AEM_BACKEND=kmod: cannot open ") + kDevice + ": " + strerror(e);
    return -e;
  }
  info_.size = sizeof info_;
  if (int r = xioctl(fd_, AEM_IOC_INFO, &info_); r < 0) {
    why = std::string("AEM_BACKEND=kmod: AEM_IOC_INFO failed: ") + strerror(-r);
    return r;
  }
  if (info_.api_version != AEM_API_VERSION) {
    why = "AEM_BACKEND=kmod: /dev/aem speaks API version " + std::to_string(info_.api_version) +
          ", this libaem " + std::to_string(AEM_API_VERSION);
    return -EPROTO;
  }
  for (size_t i = 0; i < kMaxCores; ++i) {
    Core* expected = nullptr;
    if (g_cores[i].compare_exchange_strong(expected, this)) {
      slot_ = static_cast<int>(i);
      break;
    }
  }
  if (slot_ < 0) {
    why = "AEM_BACKEND=kmod: too many contexts in this process";
    return -EMFILE;
  }
  int err = 0;
  setup_ring(why, err);
  return err;
}

// The completion ring, if the policy wants one. A ring the kernel refuses
// (RLIMIT_MEMLOCK) leaves the pulls to AEM_IOC_WAIT; a ring that exists
// but cannot be mapped is an error: the kernel would move deliveries into
// it that nobody could read.
void Core::setup_ring(std::string& why, int& err) {
  if (!policy_.kmod_ring_entries || fd_ < 0) return;
  aem_ring_setup rs{};
  rs.size = sizeof rs;
  rs.entries = policy_.kmod_ring_entries;
  if (xioctl(fd_, AEM_IOC_RING_SETUP, &rs) < 0) return;
  void* m = mmap(nullptr, rs.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (m == MAP_FAILED) {
    err = -errno;
    why = std::string("AEM_BACKEND=kmod: cannot map the completion ring: ") + strerror(errno);
    return;
  }
  ring_ = static_cast<aem_ring_hdr*>(m);
  ring_ents_ = reinterpret_cast<const aem_delivery*>(static_cast<const char*>(m) + rs.entries_off);
  ring_mask_ = rs.entries - 1;
  ring_bytes_ = rs.mmap_size;
}

int Core::shutdown() {
  std::unique_lock lk(mu_);
  if (stopping_) return 0;
  if (forked_.load()) forget_parent();  // a child that never used it
  stopping_ = true;
  for (auto& [id, r] : regs_) retire(*r);
  uint64_t one = 1;
  if (worker_ && wq_ && write(wq_->wakefd, &one, sizeof one) < 0) {
  }
  for (auto& [t, q] : queues_) interrupt(*q);  // threads in aem_dispatch() return
  lk.unlock();
  if (worker_) {
    if (worker_->get_id() == std::this_thread::get_id())
      worker_->detach();  // cleaned from one of its own handlers
    else if (worker_->joinable())
      worker_->join();
  }
  lk.lock();
  reap_children(true);
  reap(lk);
  // The arena's mapping holds the context file: unmap it, or closing the
  // fd would not release the context and its registrations.
  if (arena_) munmap(const_cast<uint8_t*>(arena_), arena_size_);
  arena_ = nullptr;
  spin_stop_.store(true);
  for (int n; (n = spinners_.load()) != 0;) spinners_.wait(n);
  if (ring_) munmap(ring_, ring_bytes_);  // it holds the context file too
  ring_ = nullptr;
  close_fd();  // the kernel releases every registration
  if (slot_ >= 0) g_cores[static_cast<size_t>(slot_)].store(nullptr);
  slot_ = -1;
  return 0;
}

// Under mu_ (so no raise starts): waits for the raises in flight, closes.
void Core::close_fd() {
  // seq_cst with raise(): it counts itself in inflight_, then loads
  // raise_fd_; either it sees -1 or this sees it counted.
  raise_fd_.store(-1);
  for (int n; (n = inflight_.load()) != 0;) inflight_.wait(n);
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

// ---------------------------------------------------------------------------
// Queues. Routing a delivery links the record's embedded node: no memory.

Queue& Core::own_queue() {
  pid_t tid = self_tid();
  auto it = queues_.find(tid);
  if (it != queues_.end()) return *it->second;
  auto q = std::make_unique<Queue>();
  q->tid = tid;
  q->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  Queue& ref = *q;
  queues_.emplace(tid, std::move(q));
  return ref;
}

Queue& Core::worker_queue() {
  if (!wq_) {
    wq_ = std::make_unique<Queue>();
    wq_->worker = true;
    wq_->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  }
  if (!worker_) worker_ = start_running([this] { worker_loop(); });
  return *wq_;
}

// Ends q's wait: a thread asleep in wait() through its eventfd, one still
// watching the ring (spin()) through poked. mu_ held: a thread between the
// two holds mu_ too, and sees the change itself. False: q does not wait.
bool Core::interrupt(Queue& q) {
  if (q.waiting) {
    uint64_t one = 1;
    if (write(q.wakefd, &one, sizeof one) < 0) {
    }
    return true;
  }
  if (!q.spinning.load(std::memory_order_relaxed)) return false;
  q.poked.store(true, std::memory_order_release);
  return true;
}

void Core::wake(Queue& q) {
  if (q.tid == self_tid()) return;  // this thread serves it right now
  if (interrupt(q)) return;
  if (q.async && !q.busy && q.tid > 0 && !q.bell.exchange(true)) {
    tgkill(getpid(), q.tid, doorbell_signal());
  }
}

void Core::enqueue(Rec& r) {
  Queue& q = *r.q;
  const auto lvl = static_cast<size_t>(r.prio);
  r.prev = q.tail[lvl];
  r.next = nullptr;
  if (q.tail[lvl])
    q.tail[lvl]->next = &r;
  else
    q.head[lvl] = &r;
  q.tail[lvl] = &r;
  q.bitmap |= uint64_t{1} << lvl;
  r.queued = true;
  wake(q);
}

void Core::dequeue(Rec& r) {
  if (!r.queued) return;
  Queue& q = *r.q;
  const auto lvl = static_cast<size_t>(r.prio);
  (r.prev ? r.prev->next : q.head[lvl]) = r.next;
  (r.next ? r.next->prev : q.tail[lvl]) = r.prev;
  if (!q.head[lvl]) q.bitmap &= ~(uint64_t{1} << lvl);
  r.queued = false;
  r.prev = r.next = nullptr;
}

void Core::notice(Rec& r, int err) {
  r.error = err;
  if (r.noticed) return;
  Queue& q = *r.q;
  r.nnext = nullptr;
  (q.ntail ? q.ntail->nnext : q.nhead) = &r;
  q.ntail = &r;
  r.noticed = true;
  wake(q);
}

void Core::unnotice(Rec& r) {
  if (!r.noticed) return;
  Queue& q = *r.q;
  Rec* prev = nullptr;
  for (Rec* x = q.nhead; x; prev = x, x = x->nnext) {
    if (x != &r) continue;
    (prev ? prev->nnext : q.nhead) = x->nnext;
    if (q.ntail == x) q.ntail = prev;
    break;
  }
  r.noticed = false;
  r.nnext = nullptr;
}

void Core::mark_gone(Rec& r) {
  if (r.gone) return;
  r.gone = true;
  --nlive_;
}

// Unregisters r in the library: invalid at once, dropped from its queue,
// destroyed by reap(). The caller cleans the kernel side when needed.
void Core::retire(Rec& r) {
  if (r.retired) return;
  mark_gone(r);
  r.retired = true;
  dequeue(r);
  unnotice(r);
  r.pending = 0;
  r.values.clear();
  drop_items(r);
  read_leave(r);
  r.stalled = false;
  r.error = 0;
  r.dnext = doomed_;
  doomed_ = &r;
}

// Destroys retired records that no handler runs: never inside the signal
// handler, and with mu_ released.
void Core::reap(std::unique_lock<std::mutex>& lk) {
  if (k_in_signal || !doomed_) return;
  std::vector<std::shared_ptr<Rec>> dead;
  Rec** link = &doomed_;
  while (Rec* r = *link) {
    if (r->running) {
      link = &r->dnext;
      continue;
    }
    *link = r->dnext;
    if (has_items(r->type)) std::erase(sock_recs_, r);
    auto it = regs_.find(r->id);
    if (it != regs_.end() && it->second.get() == r) {
      std::unique_lock w(regs_mu_);
      dead.push_back(std::move(it->second));
      regs_.erase(it);
    }
  }
  for (auto it = groups_.begin(); it != groups_.end();) {
    if (it->second->dead && it->second->recs.empty())
      it = groups_.erase(it);
    else
      ++it;
  }
  lk.unlock();
  dead.clear();
  lk.lock();
}

// ---------------------------------------------------------------------------
// Pull and route.

// Before each batch of kPullMax: room for socket items. Outside the
// doorbell handler it grows the records; inside it nothing may allocate,
// so without room it leaves the deliveries in the kernel and says so (the
// doorbell handler signals itself again, run_async_here()).
bool Core::room_for_pull(Queue& self) {
  if (!k_in_signal) {
    for (Rec* r : sock_recs_)
      if (r->items.room() < 2 * kPullMax) r->items.reserve(r->items.size() + kItemRoom);
    return true;
  }
  if (sock_recs_.empty() || items_room()) return true;
  items_full_ = true;
  self.undrained = true;
  return false;
}

// Pulls deliveries without waiting and routes them; with until_mine, stops
// once something for self was pulled. Returns how many, or -errno.
int Core::pull(Queue& self, bool until_mine) {
  if (fd_ < 0 || stopping_) return 0;
  if (ring_) return pull_ring(self);
  int total = 0;
  for (;;) {
    if (!room_for_pull(self)) return total;
    aem_delivery buf[kPullMax];
    aem_wait w{};
    w.size = sizeof w;
    w.deliveries = reinterpret_cast<uintptr_t>(buf);
    w.max = kPullMax;
    w.dsize = sizeof(aem_delivery);
    w.timeout_ns = 0;
    int n = xioctl(fd_, AEM_IOC_WAIT, &w);
    if (n < 0) return n;
    bool mine = false;
    for (int i = 0; i < n; ++i) mine |= route(buf[i], self);
    total += n;
    self.undrained = n == static_cast<int>(kPullMax);
    if (n < static_cast<int>(kPullMax) || (until_mine && mine)) return total;
  }
}

// Takes everything in the ring (no system call), then, once, refills it
// when the kernel holds more (backlog) or self holds a boost to end.
// Returns how many deliveries it routed, or -errno.
int Core::pull_ring(Queue& self) {
  int total = 0;
  bool refilled = false;
  uint32_t head = ring_->head;  // only this library writes it, under mu_
  for (;;) {
    if (!room_for_pull(self)) return total;
    // Pairs with the kernel's store-release of tail: the entries before
    // it are written.
    const uint32_t tail = __atomic_load_n(&ring_->tail, __ATOMIC_ACQUIRE);
    unsigned n = 0;
    for (; head != tail && n < kPullMax; ++head, ++n) {
      const aem_delivery d = ring_ents_[head & ring_mask_];
      if (d.flags & AEM_DLV_BOOST) self.boost_held = true;  // this thread's refill took it
      route(d, self);
    }
    if (n) {
      // The entries are copied: pairs with the kernel's load-acquire of
      // head before it writes over them.
      __atomic_store_n(&ring_->head, head, __ATOMIC_RELEASE);
      total += static_cast<int>(n);
      continue;
    }
    bool backlog = __atomic_load_n(&ring_->backlog, __ATOMIC_RELAXED) != 0;
    if ((backlog || self.boost_held) && !refilled) {
      // Level-triggered sources are re-checked, the queue moves into the
      // ring; the ioctl ends a boost self held (the kernel's rule).
      self.boost_held = false;
      refilled = true;
      aem_wait w{};
      w.size = sizeof w;
      w.flags = AEM_WAIT_REFILL;
      if (int r = xioctl(fd_, AEM_IOC_WAIT, &w); r < 0) return r;
      continue;
    }
    if (!backlog && sig_tid_ && __atomic_load_n(&ring_->doorbell, __ATOMIC_RELAXED)) {
      // Re-arm the doorbell, then look again (Dekker, see the top).
      __atomic_store_n(&ring_->doorbell, 0u, __ATOMIC_SEQ_CST);
      if (__atomic_load_n(&ring_->tail, __ATOMIC_SEQ_CST) != head) continue;
      backlog = __atomic_load_n(&ring_->backlog, __ATOMIC_SEQ_CST) != 0;
    }
    self.undrained = backlog;
    return total;
  }
}

// Returns true when the delivery went to self.
bool Core::route(const aem_delivery& d, Queue& self) {
  if (d.id == 0) {  // overload notification: the pending limit was reached
    self.overload += d.count ? d.count : 1;
    return true;
  }
  if (d.user_data & kGroupTag) return route_read(d, self);
  auto it = regs_.find(static_cast<int>(d.user_data));
  if (it == regs_.end()) {
    // Cleaned meanwhile: a connection accepted for it is not wanted.
    if (d.type == AEM_EV_ACCEPT && !d.error && !d.data[1]) close(static_cast<int>(d.value));
    return false;
  }
  Rec& r = *it->second;
  if (r.kid != d.id || r.retired) {  // cleaned meanwhile
    if (r.type == AEM_EV_ACCEPT && !d.error && !d.data[1]) close(static_cast<int>(d.value));
    return false;
  }
  Queue& q = *r.q;
  if (d.error) {
    // The kernel's final delivery (-ETIMEDOUT): the registration is gone.
    mark_gone(r);
    r.err_final = true;
    dequeue(r);
    r.pending = 0;
    notice(r, d.error);
    return &q == &self;
  }
  if (const auto status = static_cast<int64_t>(d.data[1]); status) {
    // Not final (socket families): -EMFILE from an accept, ...
    ++r.lib_errors;
    notice(r, static_cast<int>(status));
    return &q == &self;
  }
  const bool poll_family = r.type == AEM_EV_FD || r.type == AEM_EV_SOCK;
  // Level trigger: the kernel re-checks readiness at each pull, so a pull
  // made while the handler runs (or before it ran) may report readiness
  // the handler is about to consume: checked again before running.
  if (poll_family && !(r.flags & AEM_EDGE) && (r.running || r.pending)) r.maybe_stale = true;
  if (r.type == AEM_EV_ACCEPT) r.items.push_back({d.value, 0});
  if (r.type == AEM_EV_SK) r.items.push_back({d.data[0], d.value});
  r.pending += has_items(r.type) ? 1 : d.count;
  if (r.type == AEM_EV_SOFT) r.value = d.value;
  if (poll_family) r.revents |= static_cast<unsigned>(d.value);
  if (d.flags & AEM_DLV_FINAL) {
    r.final_seen = true;
    mark_gone(r);
  }
  if (r.enabled && !r.queued && r.pending) enqueue(r);
  return &q == &self;
}

// ---------------------------------------------------------------------------
// Delivery.

int Core::run_error(Queue& q, int jid, int err, Rec* r, std::unique_lock<std::mutex>& lk) {
  if (!err_handler_) return 0;
  q.busy = true;
  if (r) {
    r->running = true;
    r->runner = self_tid();
  }
  std::shared_ptr<ErrorHandler> h = err_handler_;
  lk.unlock();
  ++k_running;
  (*h)(jid, err);
  --k_running;
  lk.lock();  // h is not the last reference: err_handler_ or on_error() has one
  if (r) r->running = false;
  q.busy = false;
  cv_.notify_all();
  return 1;
}

int Core::run_one(Queue& q, std::unique_lock<std::mutex>& lk) {
  if (stopping_) return -1;
  if (q.nhead) {
    Rec& r = *q.nhead;
    q.nhead = r.nnext;
    if (!q.nhead) q.ntail = nullptr;
    r.noticed = false;
    r.nnext = nullptr;
    const int err = r.error;
    r.error = 0;
    std::shared_ptr<Rec> hold = r.shared_from_this();
    if (r.err_final) retire(r);
    int ran = run_error(q, r.id, err, &r, lk);
    hold.reset();  // not the last reference: regs_ keeps it until reap()
    reap(lk);
    return ran;
  }
  if (q.overload) {
    q.overload = 0;
    return run_error(q, 0, -EOVERFLOW, nullptr, lk);
  }
  if (!q.bitmap) return -1;
  const auto lvl = static_cast<size_t>(63 - std::countl_zero(q.bitmap));
  Rec& r = *q.head[lvl];
  std::shared_ptr<Rec> hold = r.shared_from_this();
  dequeue(r);

  Event ev;
  ev.jid = r.id;
  ev.type = r.type;
  ev.fd = r.fd;
  // Socket items are delivered one per call, like the kernel made them.
  const bool per =
      has_items(r.type) || ((r.flags & AEM_PER_OCCURRENCE) && !(r.flags & AEM_ONESHOT));
  const uint64_t used = per ? 1 : r.pending;
  ev.count = used;
  Item item;
  bool arena_chunk = false;  // ev.data is in the arena: released after the handler
  void* app_buf = nullptr;   // ev.data is the application's: released after the handler
  const Allocator app = user_alloc_;
  switch (r.type) {
    case AEM_EV_SOFT:
      ev.value = per && r.values.size() ? r.values.pop_front() : r.value;
      break;
    case AEM_EV_FD:
    case AEM_EV_SOCK:
      ev.events = r.revents;
      if (!per || r.pending == 1) r.revents = 0;
      break;
    case AEM_EV_ACCEPT:
      item = r.items.pop_front();
      ev.new_fd = static_cast<int>(item.a);
      break;
    case AEM_EV_SK:
      item = r.items.pop_front();
      ev.old_state = static_cast<int>(item.a);
      ev.new_state = static_cast<int>(item.b);
      break;
    case AEM_EV_READ:
      item = r.items.front();
      if (item.b && app.alloc) {
        // The application's memory (AEM-3.4.1): one copy out of the arena.
        app_buf = app.alloc(item.b, app.opaque);
        if (!app_buf) {
          // Reported; the chunk waits until aem_set_allocator() is called.
          r.stalled = true;
          ++r.lib_errors;
          notice(r, -ENOMEM);
          hold.reset();
          reap(lk);
          return 0;
        }
        memcpy(app_buf, arena_ + item.a, item.b);
        arena_release(item.a);
      }
      r.items.pop_front();
      if (item.b) {
        ev.data = app_buf ? app_buf : arena_ + item.a;
        ev.len = item.b;
        arena_chunk = !app_buf;
      }
      break;
    default:
      break;
  }
  r.pending -= used;
  const bool stale = r.maybe_stale;
  if (!r.pending) r.maybe_stale = false;
  if (r.pending && r.enabled) enqueue(r);  // the rest, behind its peers (FIFO)

  if (stale) {
    pollfd p{r.fd, static_cast<short>(r.events), 0};
    const int n = poll(&p, 1, 0);
    const unsigned want = r.events | POLLERR | POLLHUP;
    if (n == 0 || (n == 1 && !(p.revents & POLLNVAL) && !(p.revents & want))) {
      r.run_occ += used;  // consumed meanwhile: nothing to report
      if (r.final_seen && !r.pending) retire(r);
      hold.reset();
      reap(lk);
      return 0;
    }
    if (n == 1 && !(p.revents & POLLNVAL)) ev.events = static_cast<unsigned>(p.revents) & want;
  }
  ++r.runs;
  r.run_occ += used;
  // One-shot readers are the library's (the kernel's reader is shared).
  const bool last = (r.final_seen && !r.pending) || (r.grp && (r.flags & AEM_ONESHOT));
  if (last) retire(r);  // one-shot: its id is invalid from here; this call goes on

  // accept: the peer address is stored before the handler runs.
  auto fill_addr = [&r, &ev] {
    if (r.type != AEM_EV_ACCEPT || !r.uaddr || !r.uaddrlen) return;
    socklen_t n = *r.uaddrlen;
    if (getpeername(ev.new_fd, r.uaddr, &n) == 0) *r.uaddrlen = n;
  };
  q.busy = true;
  r.running = true;
  r.runner = self_tid();
  if (r.exec == AEM_EXEC_PROCESS) {
    // A new process per activation (served by the worker thread). Read
    // data stays in the arena, which the child shares at the same address
    // (direct data copy); an accepted connection belongs to the child.
    lk.unlock();
    pid_t pid = fork();
    if (pid == 0) {
      ++k_running;
      fill_addr();
      r.invoke(ev);
      _exit(0);
    }
    const int fork_err = pid < 0 ? errno : 0;
    lk.lock();
    if (r.type == AEM_EV_ACCEPT) close(ev.new_fd);
    if (app_buf) app.release(app_buf, ev.len, app.opaque);
    if (pid > 0) {
      Child c;
      c.pid = pid;
      c.pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
      if (arena_chunk) c.chunk = static_cast<int64_t>(item.a);
      children_.push_back(c);
    } else {
      if (arena_chunk) arena_release(item.a);
      if (!r.retired) {
        ++r.lib_errors;
        notice(r, -fork_err);
      }
    }
  } else {
    fill_addr();
    lk.unlock();
    ++k_running;
    r.invoke(ev);
    --k_running;
    if (app_buf) app.release(app_buf, ev.len, app.opaque);
    lk.lock();
    if (arena_chunk) arena_release(item.a);
  }
  r.running = false;
  q.busy = false;
  cv_.notify_all();
  hold.reset();
  reap(lk);
  return 1;
}

// Before a thread sleeps, it watches the ring for a while (AEM_KMOD_SPIN_US):
// under a sustained stream the next delivery comes sooner than a sleep and
// a wake-up would take, and taking it then costs no system call. Runs
// without mu_ (the producers' raises take it); shutdown() waits for the
// spinners before it unmaps the ring. Returns true when the ring moved or
// work was routed to q meanwhile: no need to sleep.
bool Core::spin(Queue& q, std::unique_lock<std::mutex>& lk) {
  if (!ring_ || !policy_.kmod_spin_ns || stopping_ || k_in_signal) return false;
  const aem_ring_hdr* h = ring_;
  const uint32_t head = h->head;  // written under mu_ only
  spinners_.fetch_add(1);
  q.poked.store(false, std::memory_order_relaxed);
  q.spinning.store(true, std::memory_order_release);
  lk.unlock();
  // The clock is read every 1024 pauses (3 to 50 us), the first time to
  // start the budget: a guest whose vDSO cannot read its clock source
  // makes clock_gettime() a system call, and the next delivery usually
  // comes before the first read.
  uint64_t end = 0;
  bool moved = false;
  for (unsigned i = 1; !spin_stop_.load(std::memory_order_relaxed); ++i) {
    // Acquire: pairs with the kernel's store-release of tail (the entries
    // are read by pull_ring() after mu_ is taken again).
    if (__atomic_load_n(&h->tail, __ATOMIC_ACQUIRE) != head ||
        __atomic_load_n(&h->backlog, __ATOMIC_RELAXED) ||
        q.poked.load(std::memory_order_acquire)) {
      moved = true;
      break;
    }
    cpu_relax();
    if (i % 1024 == 0) {
      const uint64_t now = now_ns(CLOCK_MONOTONIC);
      if (!end)
        end = now + policy_.kmod_spin_ns;
      else if (now >= end)
        break;
    }
  }
  q.spinning.store(false, std::memory_order_relaxed);
  if (spinners_.fetch_sub(1) == 1) spinners_.notify_all();
  lk.lock();
  return moved || q.poked.load(std::memory_order_relaxed) || q.nhead || q.overload || q.bitmap;
}

int Core::wait(Queue& q, std::unique_lock<std::mutex>& lk, int timeout_ms) {
  if (spin(q, lk)) return 1;
  std::vector<pollfd> extra;  // the worker's children (never in a signal handler)
  if (q.worker)
    for (const Child& c : children_)
      if (c.pidfd >= 0) extra.push_back({c.pidfd, POLLIN, 0});
  bool unwatched = false;
  if (q.worker)
    for (const Child& c : children_) unwatched |= c.pidfd < 0;
  if (unwatched && (timeout_ms < 0 || timeout_ms > 100)) timeout_ms = 100;
  q.waiting = true;
  const int fd = fd_;
  lk.unlock();
  std::vector<pollfd> p;
  pollfd base[2] = {{fd, POLLIN, 0}, {q.wakefd, POLLIN, 0}};
  pollfd* pp = base;
  nfds_t np = 2;
  if (!extra.empty()) {
    p.assign(base, base + 2);
    p.insert(p.end(), extra.begin(), extra.end());
    pp = p.data();
    np = p.size();
  }
  timespec ts{}, *tsp = nullptr;
  if (timeout_ms >= 0) {
    ts.tv_sec = timeout_ms / 1000;
    ts.tv_nsec = (timeout_ms % 1000) * 1000000L;
    tsp = &ts;
  }
  // The doorbell is blocked while waiting: the context fd serves then, and
  // only the application's signals interrupt the wait.
  sigset_t mask;
  pthread_sigmask(SIG_SETMASK, nullptr, &mask);
  sigaddset(&mask, doorbell_signal());
  int n = ppoll(pp, np, tsp, &mask);
  int e = errno;
  if (n > 0 && (pp[1].revents & POLLIN)) {
    uint64_t v;
    if (read(q.wakefd, &v, sizeof v) < 0) {
    }
  }
  lk.lock();
  q.waiting = false;
  return n < 0 ? -e : n;
}

int Core::dispatch(int timeout_ms) {
  Entry entry;
  if (k_running) return -EDEADLK;
  if (timeout_ms < -1) return -EINVAL;
  check_fork();
  auto keep = shared_from_this();  // a handler may release the context
  std::unique_lock lk(mu_);
  if (open_err_) return open_err_;
  if (stopping_) return -ESHUTDOWN;
  reap(lk);
  Queue& q = own_queue();
  const uint64_t deadline =
      timeout_ms > 0 ? now_ns(CLOCK_MONOTONIC) + uint64_t(timeout_ms) * 1000000ull : 0;
  int ran = 0;
  for (;;) {
    for (;;) {
      if (ran >= kDispatchBatch || stopping_) break;
      if (int p = pull(q, true); p < 0) return ran ? ran : p;
      int r = run_one(q, lk);
      if (r < 0) break;
      ran += r;
    }
    // Async: what this thread left in the kernel rings the doorbell again
    // only after a pull that empties it; ring it ourselves.
    if (q.async && q.undrained && !stopping_ && !q.bell.exchange(true))
      tgkill(getpid(), q.tid, doorbell_signal());
    if (ran > 0 || timeout_ms == 0 || stopping_) return ran;
    int left = -1;
    if (timeout_ms > 0) {
      uint64_t now = now_ns(CLOCK_MONOTONIC);
      if (now >= deadline) return 0;
      left = static_cast<int>((deadline - now + 999999) / 1000000);
    }
    if (q.nhead || q.overload || q.bitmap) continue;
    if (wait(q, lk, left) == -EINTR) return -EINTR;
  }
}

int Core::keepalive() {
  Entry entry;
  if (k_running) return -EDEADLK;
  check_fork();
  auto keep = shared_from_this();
  std::unique_lock lk(mu_);
  if (open_err_) return open_err_;
  if (stopping_) return -ESHUTDOWN;
  Queue& q = own_queue();
  ++keepalive_count_;
  int rc = 0;
  for (;;) {
    if (stop_requested_ || stopping_) break;
    if (int p = pull(q, true); p < 0) {
      rc = p;
      break;
    }
    if (run_one(q, lk) >= 0) continue;
    if (wait(q, lk, -1) == -EINTR) {
      rc = -EINTR;
      break;
    }
  }
  if (--keepalive_count_ == 0) stop_requested_ = false;
  return rc;
}

void Core::stop() {
  Entry entry;
  std::lock_guard lk(mu_);
  stop_requested_ = true;
  for (auto& [t, q] : queues_) interrupt(*q);
}

void Core::worker_loop() {
  Entry entry;
  auto keep = weak_from_this().lock();  // a handler may release the context
  std::unique_lock lk(mu_);
  Queue& q = *wq_;
  q.tid = self_tid();
  while (!stopping_ && !forked_) {
    reap_children(false);
    if (pull(q, true) < 0) {
      wait(q, lk, 100);
      continue;
    }
    if (run_one(q, lk) >= 0) continue;
    wait(q, lk, -1);
  }
}

void Core::reap_children(bool block) {
  for (size_t i = 0; i < children_.size();) {
    Child& c = children_[i];
    if (waitpid(c.pid, nullptr, block ? 0 : WNOHANG) == 0) {
      ++i;
      continue;
    }
    if (c.pidfd >= 0) close(c.pidfd);
    if (c.chunk >= 0) arena_release(static_cast<uint64_t>(c.chunk));
    children_[i] = children_.back();
    children_.pop_back();
  }
}

// ---------------------------------------------------------------------------
// Registration.

int Core::new_id() {
  for (;;) {
    int id = next_id_;
    next_id_ = next_id_ == INT_MAX ? 1 : next_id_ + 1;
    if (!regs_.count(id)) return id;
  }
}

Rec* Core::find(int jid) {
  auto it = regs_.find(jid);
  return it == regs_.end() || it->second->gone ? nullptr : it->second.get();
}

// AEM_IOC_REGISTER for r with the given kernel flags; sets r.kid.
int Core::kreg(Rec& r, uint32_t kflags, int64_t value_ns, uint64_t user_data) {
  aem_reg kr{};
  kr.size = sizeof kr;
  kr.type = static_cast<uint32_t>(r.type);
  kr.flags = kflags;
  kr.user_data = user_data ? user_data : static_cast<uint64_t>(r.id);
  if (r.type == AEM_EV_TIMER) {
    kr.arg.timer.value_ns = value_ns;
    kr.arg.timer.period_ns = r.period_ns;
  } else if (r.type == AEM_EV_FD) {
    kr.arg.fd.fd = r.fd;
    kr.arg.fd.events = r.events;
  } else if (r.type >= AEM_EV_ACCEPT && r.type <= AEM_EV_SOCK) {
    kr.arg.sock.fd = r.fd;
    kr.arg.sock.events = (r.type == AEM_EV_SOCK || r.type == AEM_EV_SK) ? r.events : 0;
  }
  int k = xioctl(fd_, AEM_IOC_REGISTER, &kr);
  if (k == -EMFILE || k == -EDQUOT) k = -ENOSPC;  // the kernel's registration limits
  if (k < 0) return k;
  r.kid = k;
  return 0;
}

int Core::kctl(const Rec& r, unsigned op, uint64_t arg) {
  aem_ctl c{};
  c.size = sizeof c;
  c.id = r.kid;
  c.op = op;
  c.arg = arg;
  return xioctl(fd_, AEM_IOC_CTL, &c);
}

// ---------------------------------------------------------------------------
// Socket families: the data arena and shared readers. Under mu_.

// Maps the context's data arena: the policy's size (AEM_ARENA_BYTES), at
// most what the kernel allows.
int Core::ensure_arena() {
  if (arena_) return 0;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  size_t bytes = (policy_.arena_bytes + page - 1) / page * page;
  if (info_.max_arena_bytes && bytes > info_.max_arena_bytes)
    bytes = info_.max_arena_bytes / page * page;
  if (bytes == 0) return -ENOMEM;
  aem_arena_setup as{};
  as.size = sizeof as;
  as.bytes = bytes;
  if (int e = xioctl(fd_, AEM_IOC_ARENA_SETUP, &as); e < 0) return e;
  void* p = mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd_, static_cast<off_t>(as.mmap_offset));
  if (p == MAP_FAILED) return -errno;  // the kernel's arena stays unused
  arena_ = static_cast<const uint8_t*>(p);
  arena_size_ = bytes;
  arena_block_ = as.block;
  arena_refs_.assign(bytes / as.block, 0);
  return 0;
}

void Core::arena_ref(uint64_t off, int refs) {
  if (!arena_ || off >= arena_size_) return;
  if (refs <= 0) {
    aem_arena_free af{};
    af.size = sizeof af;
    af.offset = off;
    xioctl(fd_, AEM_IOC_ARENA_FREE, &af);
    return;
  }
  arena_refs_[off / arena_block_] = static_cast<uint16_t>(refs);
}

// One reader is done with the chunk at off; the last one gives it back.
// No allocation: fine inside the doorbell handler.
void Core::arena_release(uint64_t off) {
  if (!arena_ || off >= arena_size_) return;
  uint16_t& n = arena_refs_[off / arena_block_];
  if (n > 1) {
    --n;
    return;
  }
  n = 0;
  arena_ref(off, 0);
}

// Joins r to the socket's reader, registering one in the kernel if there
// is none (or the last one reached EOF).
int Core::read_join(Rec& r) {
  struct stat st;
  if (fstat(r.fd, &st) < 0) return -EBADF;
  for (auto& [gid, g] : groups_) {
    if (g->dead || g->eof || g->fd != r.fd || g->dev != st.st_dev || g->ino != st.st_ino) continue;
    g->recs.push_back(&r);
    r.grp = g.get();
    r.kid = g->kid;
    return 0;
  }
  if (int e = ensure_arena(); e < 0) return e;
  auto g = std::make_unique<ReadGroup>();
  g->gid = next_gid_++;
  g->fd = r.fd;
  g->dev = st.st_dev;
  g->ino = st.st_ino;
  // Priority, disabling and one-shot are per reader, in the library; the
  // kernel checks the executor against its policy.
  const uint32_t kf = (r.flags & AEM_EXEC_MASK) | AEM_PRIO_GIVEN |
                      (static_cast<uint32_t>(AEM_PRIO_MAX) << AEM_PRIO_SHIFT);
  if (int e = kreg(r, kf, 0, kGroupTag | static_cast<uint64_t>(g->gid)); e < 0) return e;
  g->kid = r.kid;
  g->recs.push_back(&r);
  r.grp = g.get();
  groups_.emplace(g->gid, std::move(g));
  return 0;
}

// r leaves its reader; the last one cleans the kernel registration. No
// allocation (the group is erased by reap()).
void Core::read_leave(Rec& r) {
  ReadGroup* g = r.grp;
  if (!g) return;
  r.grp = nullptr;
  auto it = std::find(g->recs.begin(), g->recs.end(), &r);
  if (it != g->recs.end()) g->recs.erase(it);
  if (g->recs.empty() && !g->dead) {
    g->dead = true;
    aem_ctl c{};
    c.size = sizeof c;
    c.id = g->kid;
    c.op = AEM_CTL_CLEAN;
    xioctl(fd_, AEM_IOC_CTL, &c);
  }
}

// Gives back what r holds and was not delivered: accepted connections
// are closed, read chunks released.
void Core::drop_items(Rec& r) {
  while (r.items.size()) {
    Item it = r.items.pop_front();
    if (r.type == AEM_EV_ACCEPT) close(static_cast<int>(it.a));
    if (r.type == AEM_EV_READ && it.b) arena_release(it.a);
  }
}

// In the doorbell handler nothing may allocate: pull only while every
// record that holds items has room for a full pull.
bool Core::items_room() const {
  for (const Rec* r : sock_recs_)
    if (!r->retired && r->items.room() < kPullMax) return false;
  return true;
}

bool Core::route_read(const aem_delivery& d, Queue& self) {
  const int gid = static_cast<int>(d.user_data & (kGroupTag - 1));
  auto it = groups_.find(gid);
  const auto status = static_cast<int64_t>(d.data[1]);
  const bool chunk = !d.error && !status && d.value;
  if (it == groups_.end() || it->second->kid != d.id || it->second->recs.empty()) {
    if (chunk) arena_ref(d.data[0], 0);  // nobody reads it any more
    return false;
  }
  ReadGroup& g = *it->second;
  bool mine = false;
  if (d.error) {  // the kernel's final delivery (-ETIMEDOUT): every reader is gone
    g.dead = true;
    for (Rec* r : g.recs) {
      mark_gone(*r);
      r->err_final = true;
      dequeue(*r);
      notice(*r, d.error);
      mine |= r->q == &self;
    }
    return mine;
  }
  if (status) {  // not final: -ECONNRESET, -ENOMEM (the arena is full)
    for (Rec* r : g.recs) {
      ++r->lib_errors;
      notice(*r, static_cast<int>(status));
      mine |= r->q == &self;
    }
    return mine;
  }
  if (chunk) arena_ref(d.data[0], static_cast<int>(g.recs.size()));
  if (!d.value) g.eof = true;
  for (Rec* r : g.recs) {
    r->items.push_back({d.value ? d.data[0] : 0, d.value});
    ++r->pending;
    if (r->enabled && !r->queued && !r->stalled) enqueue(*r);
    mine |= r->q == &self;
  }
  return mine;
}

int Core::add(Spec&& spec) {
  Entry entry;
  check_fork();
  const uint64_t f = spec.flags;
  int prio = 0;
  unsigned exec = 0;
  const uint64_t min_period =
      std::max<uint64_t>(policy_.min_timer_period_ns, info_.min_timer_period_ns);
  if (int e = check_spec(spec, policy_, min_period, prio, exec); e < 0) return e;
  const int64_t value_ns = spec.type == AEM_EV_TIMER ? ts_ns(*spec.value) : 0;

  std::unique_lock lk(mu_);
  if (open_err_) return open_err_;
  if (stopping_) return -ESHUTDOWN;
  reap(lk);
  if (nlive_ >= policy_.max_registrations) return -ENOSPC;
  auto r = std::make_shared<Rec>();
  r->type = spec.type;
  r->flags = static_cast<uint32_t>(f);
  // The effective trigger is visible in AEM_CTL_LOOKUP: level by default.
  if ((spec.type == AEM_EV_FD || spec.type == AEM_EV_SOCK) && !(f & (AEM_EDGE | AEM_LEVEL)))
    r->flags |= AEM_LEVEL;
  r->prio = prio;
  r->exec = exec;
  const bool has_fd = spec.type != AEM_EV_TIMER && spec.type != AEM_EV_SOFT;
  r->fd = has_fd ? spec.fd : -1;
  r->events = spec.type == AEM_EV_FD     ? spec.events
              : spec.type == AEM_EV_SOCK ? AEM_SOCK_DEFAULT
              : spec.type == AEM_EV_SK   ? AEM_SK_STATES
                                         : 0;
  r->uaddr = spec.addr;
  r->uaddrlen = spec.addrlen;
  r->enabled = !(f & AEM_DISABLED);
  r->invoke = std::move(spec.invoke);
  if (spec.type == AEM_EV_TIMER) {
    r->clock = (f & AEM_REALTIME) ? CLOCK_REALTIME : CLOCK_MONOTONIC;
    r->period_ns = spec.period ? ts_ns(*spec.period) : 0;
    const auto now = static_cast<int64_t>(now_ns(r->clock));
    r->start_ns = (f & AEM_ABSTIME) ? value_ns
                  : value_ns > INT64_MAX - now ? INT64_MAX
                                               : now + value_ns;
  }
  r->id = new_id();
  if (spec.type == AEM_EV_READ) {
    if (int e = read_join(*r); e < 0) return e;
  } else if (int e = kreg(*r, static_cast<uint32_t>(f), value_ns); e < 0) {
    return e;
  }
  r->q = exec == AEM_EXEC_SAME ? &own_queue() : &worker_queue();
  if (spec.type == AEM_EV_ACCEPT || spec.type == AEM_EV_READ || spec.type == AEM_EV_SK) {
    r->items.reserve(kItemRoom);
    sock_recs_.push_back(r.get());
  }
  {
    std::unique_lock w(regs_mu_);
    regs_.emplace(r->id, r);
  }
  ++nlive_;
  return r->id;
}

// ---------------------------------------------------------------------------
// Control.

int Core::raise(int jid, uint64_t value) {
  Entry entry;
  check_fork();
  if (jid <= 0) return -EINVAL;
  // A merged raise changes no library state: it needs the kernel's id
  // alone, read under regs_mu_, and never waits for mu_, which the thread
  // that pulls and runs the handlers holds: raising threads (a flood of
  // them) would queue behind it, and under load each such wait costs a
  // sleep and a wake-up (AEM-3.2.1 latency, and system calls the delivery
  // did not need).
  int kid = 0;
  {
    std::shared_lock rl(regs_mu_);
    if (auto it = regs_.find(jid); it != regs_.end()) {
      const Rec& r = *it->second;
      if (!r.gone && r.type == AEM_EV_SOFT && !(r.flags & AEM_PER_OCCURRENCE)) kid = r.kid;
    }
  }
  if (kid > 0) {
    inflight_.fetch_add(1);
    const int fd = raise_fd_.load();
    int e = -ESHUTDOWN;
    if (fd >= 0) {
      aem_raise a{};
      a.size = sizeof a;
      a.id = kid;
      a.count = 1;
      a.value = value;
      e = xioctl(fd, AEM_IOC_RAISE, &a);
    }
    if (inflight_.fetch_sub(1) == 1) inflight_.notify_all();
    if (e == -ENOENT) return raise_into_final(jid, value);
    if (e != -ESHUTDOWN) return e < 0 ? e : 0;
  }
  std::unique_lock lk(mu_);
  if (open_err_) return open_err_;
  Rec* r = find(jid);
  if (!r) return -ENOENT;
  if (r->type != AEM_EV_SOFT) return -EINVAL;
  aem_raise a{};
  a.size = sizeof a;
  a.id = r->kid;
  a.count = 1;
  a.value = value;
  if (r->flags & AEM_PER_OCCURRENCE) {
    // The values queue in raise order: push and kernel count move together.
    r->values.push_back(value);
    int e = xioctl(fd_, AEM_IOC_RAISE, &a);
    if (e < 0) r->values.pop_back();
    return e < 0 ? e : 0;
  }
  // A merged raise changes no library state: the ioctl runs without mu_,
  // so raising threads (a flood of them) never make the thread that pulls
  // and runs the handlers queue for mu_ behind them: under CPU load each
  // such wait costs a sleep and a wake-up (AEM-3.2.1 latency). inflight_
  // keeps fd_ open meanwhile (close_fd()). A clean that races with it makes
  // it -ENOENT.
  inflight_.fetch_add(1);
  const int fd = fd_;
  lk.unlock();
  int e = xioctl(fd, AEM_IOC_RAISE, &a);
  if (inflight_.fetch_sub(1) == 1) inflight_.notify_all();
  if (e == -ENOENT) return raise_into_final(jid, value);
  return e < 0 ? e : 0;
}

// The kernel took the registration's final delivery (a one-shot's), which
// waits in the ring or in the library for its handler: the occurrence
// merges into it here, as it would have merged in the kernel a moment
// earlier. Once the handler runs, the id is invalid (-ENOENT).
int Core::raise_into_final(int jid, uint64_t value) {
  std::unique_lock lk(mu_);
  auto it = regs_.find(jid);  // not find(): a pulled final delivery made it gone
  if (it == regs_.end()) return -ENOENT;
  Rec* r = it->second.get();
  if (r->retired || !r->q) return -ENOENT;
  if (!r->final_seen && pull(*r->q, false) < 0) return -ENOENT;
  if (!r->final_seen || !r->pending || r->retired) return -ENOENT;
  ++r->pending;
  r->value = value;
  return 0;
}

void Core::set_doorbell(pid_t tid) {
  if (sig_tid_ == tid || fd_ < 0) return;
  aem_signal s{};
  s.size = sizeof s;
  s.signo = tid ? doorbell_signal() : 0;
  s.tid = tid;
  if (xioctl(fd_, AEM_IOC_SET_SIGNAL, &s) == 0) sig_tid_ = tid;
}

int Core::ctl(int jid, unsigned int op, unsigned long arg) {
  Entry entry;
  check_fork();
  if (jid <= 0 || op < 1 || op > AEM_CTL_MAX) return -EINVAL;
  std::unique_lock lk(mu_);
  if (open_err_) return open_err_;
  Rec* rp = find(jid);
  if (!rp) return -ENOENT;
  Rec& r = *rp;
  // A reader shares its kernel registration with the socket's other
  // readers: enabling, priority and cleaning are its own, in the library.
  const bool shared = r.type == AEM_EV_READ;
  switch (op) {
    case AEM_CTL_ENABLE:
    case AEM_CTL_DISABLE: {
      if (arg) return -EINVAL;
      if (int e = shared ? 0 : kctl(r, op, 0); e < 0) return e;
      r.enabled = op == AEM_CTL_ENABLE;
      if (!r.enabled)
        dequeue(r);  // pulled occurrences are held too
      else if (r.pending && !r.queued && !r.stalled)
        enqueue(r);
      return 0;
    }
    case AEM_CTL_FILTER: {
      // fd, sock: poll bits; sk: TCP states (the kernel checks them).
      if (r.type != AEM_EV_FD && r.type != AEM_EV_SOCK && r.type != AEM_EV_SK) return -EINVAL;
      if (!arg) return -EINVAL;
      if (r.type != AEM_EV_SK && (arg & ~static_cast<unsigned long>(kPollBits))) return -EINVAL;
      if (r.type == AEM_EV_SK && (arg & ~static_cast<unsigned long>(AEM_SK_STATES))) return -EINVAL;
      int e = kctl(r, op, arg);
      if (e == -EOPNOTSUPP) e = -EINVAL;
      if (e < 0) return e;
      r.events = static_cast<unsigned>(arg);
      return 0;
    }
    case AEM_CTL_LOOKUP: {
      if (!arg) return -EINVAL;
      aem_reg_info ki{};
      ki.size = sizeof ki;
      if (shared) {
        ki.prio = static_cast<uint32_t>(r.prio);
        ki.enabled = r.enabled;
      } else if (int e = kctl(r, op, reinterpret_cast<uintptr_t>(&ki)); e < 0) {
        return e;
      }
      auto* info = reinterpret_cast<aem_event_info*>(arg);
      *info = aem_event_info{};
      info->jid = r.id;
      info->type = r.type;
      info->fd = r.fd;
      info->prio = static_cast<int>(ki.prio);
      info->enabled = ki.enabled ? 1 : 0;
      info->flags = r.flags;
      info->events = r.events;
      info->executor = static_cast<int>(r.exec);
      info->pending = ki.pending + r.pending;
      return 0;
    }
    case AEM_CTL_SET_TIMEOUT: {
      if (arg > static_cast<unsigned long>(INT_MAX)) return -EINVAL;
      if (int e = kctl(r, op, arg); e < 0) return e;
      r.timeout_ms = arg;
      return 0;
    }
    case AEM_CTL_SET_PRIO: {
      if (arg > static_cast<unsigned long>(AEM_PRIO_MAX)) return -EINVAL;
      if (int e = shared ? 0 : kctl(r, op, arg); e < 0) return e;
      const bool was = r.queued;
      dequeue(r);
      r.prio = static_cast<int>(arg);
      if (was) enqueue(r);
      return 0;
    }
    case AEM_CTL_CLEAN: {
      if (arg) return -EINVAL;
      int e = shared ? 0 : kctl(r, op, 0);  // a reader: retire() leaves its group
      auto hold = r.shared_from_this();
      retire(r);
      // When it returns, the handler is not running elsewhere (a handler
      // may clean itself).
      cv_.wait(lk, [&] { return !r.running || r.runner == self_tid(); });
      hold.reset();
      reap(lk);
      return e == -ENOENT ? 0 : e;  // -ENOENT: its final delivery was on its way
    }
    case AEM_CTL_STATS: {
      if (!arg) return -EINVAL;
      aem_reg_stats ks{};
      ks.size = sizeof ks;
      // A reader: the kernel counts the socket's chunks, for all its readers.
      if (int e = kctl(r, op, reinterpret_cast<uintptr_t>(&ks)); e < 0 && !shared) return e;
      auto* st = reinterpret_cast<aem_event_stats*>(arg);
      *st = aem_event_stats{};
      // The kernel counts a delivery when it is pulled; the application
      // counts handler calls: pulled and not yet run is still pending.
      st->activations = ks.activations;
      st->deliveries = r.runs;
      st->merged = r.run_occ - r.runs;
      st->errors = ks.errors + r.lib_errors;
      st->pending = ks.pending + r.pending;
      return 0;
    }
  }
  return -EINVAL;
}

void Core::on_error(ErrorHandler handler) {
  Entry entry;
  auto next = handler ? std::make_shared<ErrorHandler>(std::move(handler)) : nullptr;
  std::unique_lock lk(mu_);
  err_handler_.swap(next);
  lk.unlock();  // the old one is destroyed here, outside mu_
}

// Read data is in the kernel's arena; with an application allocator each
// chunk is copied into the application's memory before its handler runs.
// Readers stalled by a failed allocation try again now.
void Core::set_allocator(const Allocator& a) {
  Entry entry;
  std::lock_guard lk(mu_);
  user_alloc_ = a;
  for (Rec* r : sock_recs_) {
    if (!r->stalled) continue;
    r->stalled = false;
    if (r->pending && r->enabled && !r->queued && !r->retired) enqueue(*r);
  }
}

// ---------------------------------------------------------------------------
// Asynchronous delivery: the kernel's doorbell (AEM_IOC_SET_SIGNAL).

int Core::set_async(int on) {
  Entry entry;
  if (on != 0 && on != 1) return -EINVAL;
  check_fork();
  if (on) install_doorbell();
  std::lock_guard lk(mu_);
  if (open_err_) return open_err_;
  if (stopping_) return -ESHUTDOWN;
  Queue& q = own_queue();
  q.async = on != 0;
  if (q.async) {
    set_doorbell(q.tid);
    if ((q.bitmap || q.nhead || q.overload) && !q.bell.exchange(true))
      tgkill(getpid(), q.tid, doorbell_signal());
  } else if (sig_tid_ == q.tid) {
    pid_t other = 0;
    for (auto& [t, x] : queues_)
      if (x->async) other = t;
    set_doorbell(other);
  }
  return 0;
}

void Core::run_async_here() {
  Entry entry;
  if (k_running) return;  // never inside a handler of this thread
  auto keep = weak_from_this().lock();  // a handler may release the context
  if (!keep) return;
  std::unique_lock lk(mu_);
  if (stopping_ || forked_.load() || fd_ < 0) return;
  auto it = queues_.find(self_tid());
  if (it == queues_.end()) return;
  Queue& q = *it->second;
  q.bell.store(false);
  const bool doorbell = sig_tid_ == q.tid;
  if (!q.async && !doorbell) return;
  for (int i = 0; i < kDispatchBatch; ++i) {
    // The kernel's protocol: drain until it is empty, which re-arms the
    // doorbell (AEM_IOC_WAIT comes back short, or the ring's is stored).
    if (pull(q, false) < 0) break;
    if (!q.async || run_one(q, lk) < 0) {
      // Socket items left in the kernel for want of room: try again once
      // handlers made some.
      if (items_full_ && q.async && !q.bell.exchange(true)) tgkill(getpid(), q.tid, doorbell_signal());
      items_full_ = false;
      return;
    }
  }
  if (!q.bell.exchange(true)) tgkill(getpid(), q.tid, doorbell_signal());  // more: later
}

void run_deferred_async() {
  k_deferred = 0;
  for (auto& slot : g_cores)
    if (Core* c = slot.load()) c->run_async_here();
}

void doorbell_handler(int, siginfo_t*, void*) {
  int saved = errno;
  if (k_depth > 0) {
    k_deferred = 1;
  } else {
    const bool was = k_in_signal;
    k_in_signal = true;
    run_deferred_async();
    k_in_signal = was;
  }
  errno = saved;
}

void install_doorbell() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_sigaction = doorbell_handler;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;  // not SA_NODEFER: one handler at a time
    sigemptyset(&sa.sa_mask);
    sigaction(doorbell_signal(), &sa, nullptr);
  });
}

// ---------------------------------------------------------------------------
// Fork (AEM-3.6.4). The context fd is bound to the parent's thread group:
// the child opens its own and registers its AEM_INHERIT registrations
// again, under the same ids. Pending occurrences stay with the parent.

void atfork_prepare() {
  ++k_depth;  // no doorbell delivery on this thread while the locks are held
  for (auto& slot : g_cores)
    if (Core* c = slot.load()) c->mu_.lock();
}

void atfork_parent() {
  for (auto& slot : g_cores)
    if (Core* c = slot.load()) c->mu_.unlock();
  if (--k_depth == 0 && k_deferred) run_deferred_async();
}

void atfork_child() {
  k_tid = 0;
  for (auto& slot : g_cores) {
    if (Core* c = slot.load()) {
      c->forked_.store(true);
      c->inflight_.store(0);  // their threads are the parent's
      c->spinners_.store(0);
      c->mu_.unlock();
    }
  }
  --k_depth;
  k_deferred = 0;
}

void Core::check_fork() {
  if (!forked_.load(std::memory_order_relaxed)) return;
  std::unique_lock lk(mu_);
  if (forked_.load()) rebuild_child();
  reap(lk);
}

// Lets go of what belongs to the parent without touching it.
void Core::forget_parent() {
  forked_.store(false);
  (void)worker_.release();  // the parent's thread does not exist here
  if (fd_ >= 0) close(fd_);  // the parent's context: unusable here
  fd_ = -1;
  raise_fd_.store(-1);
  for (Child& c : children_)
    if (c.pidfd >= 0) close(c.pidfd);
  children_.clear();  // the parent's children
  for (auto& [t, q] : queues_)
    if (q->wakefd >= 0) close(q->wakefd);
  queues_.clear();
  if (wq_ && wq_->wakefd >= 0) close(wq_->wakefd);
  wq_.reset();
  sig_tid_ = 0;
  stop_requested_ = false;
  keepalive_count_ = 0;
  // The parent's arena is the parent's: never freed from here. Its mapping
  // holds the parent's context file, so a child unmaps it, except a
  // PROCESS executor child, whose handler's data is in it.
  for (auto& [id, r] : regs_) {
    if (r->type == AEM_EV_ACCEPT)  // the parent's connections: its copies stay
      while (r->items.size()) close(static_cast<int>(r->items.pop_front().a));
    r->items.clear();
    r->grp = nullptr;
    r->stalled = false;
  }
  groups_.clear();
  if (arena_ && k_running == 0) munmap(const_cast<uint8_t*>(arena_), arena_size_);
  arena_ = nullptr;
  ring_ = nullptr;  // the parent's ring is not mapped here (VM_DONTCOPY)
  ring_ents_ = nullptr;
  arena_size_ = 0;
  arena_refs_.clear();
  items_full_ = false;
}

void Core::rebuild_child() {
  forget_parent();
  fd_ = open(kDevice, O_RDWR | O_CLOEXEC);
  if (fd_ < 0) open_err_ = -errno;
  std::string why;
  int err = 0;
  setup_ring(why, err);
  if (err) {
    open_err_ = err;
    close(fd_);
    fd_ = -1;
  }
  raise_fd_.store(fd_);
  for (auto& [id, rp] : regs_) {
    Rec& r = *rp;
    // The parent's deliveries are the parent's.
    r.queued = r.noticed = r.running = false;
    r.prev = r.next = r.nnext = nullptr;
    r.pending = 0;
    r.revents = 0;
    r.values.clear();
    r.error = 0;
    r.maybe_stale = false;
    r.q = nullptr;
    if (r.retired) continue;
    if (r.gone || !(r.flags & AEM_INHERIT) || fd_ < 0) {
      retire(r);
      continue;
    }
    r.q = r.exec == AEM_EXEC_SAME ? &own_queue() : &worker_queue();
    uint32_t kf = (r.flags & ~(AEM_PRIO_FIELD | AEM_DISABLED)) | AEM_PRIO_GIVEN |
                  (static_cast<uint32_t>(r.prio) << AEM_PRIO_SHIFT);
    if (!r.enabled) kf |= AEM_DISABLED;
    int64_t value = 0;
    if (r.type == AEM_EV_TIMER) {
      // Same phase as in the parent: the next expiry, as an absolute time.
      const auto now = static_cast<int64_t>(now_ns(r.clock));
      kf |= AEM_ABSTIME;
      if (r.start_ns > now)
        value = r.start_ns;
      else if (r.period_ns > 0)
        value = r.start_ns + ((now - r.start_ns) / r.period_ns + 1) * r.period_ns;
      else
        value = INT64_MAX;  // a one-shot that expired in the parent
    }
    const int e = r.type == AEM_EV_READ ? read_join(r) : kreg(r, kf, value);
    if (e < 0 || (r.timeout_ms && kctl(r, AEM_CTL_SET_TIMEOUT, r.timeout_ms) < 0)) {
      r.q = nullptr;
      retire(r);
    }
  }
}

// ---------------------------------------------------------------------------
// The Backend: a handle on a Core, which outlives it while one of its
// handlers runs (a context released from inside its own handler).

class KmodBackend final : public Backend {
 public:
  explicit KmodBackend(std::shared_ptr<Core> c) : c_(std::move(c)) {}
  ~KmodBackend() override { c_->shutdown(); }
  const char* name() const override { return "kmod"; }
  int add(Spec&& spec) override { return c_->add(std::move(spec)); }
  int raise(int jid, uint64_t value) override { return c_->raise(jid, value); }
  int ctl(int jid, unsigned int op, unsigned long arg) override { return c_->ctl(jid, op, arg); }
  int dispatch(int timeout_ms) override { return c_->dispatch(timeout_ms); }
  int keepalive() override { return c_->keepalive(); }
  void stop() override { c_->stop(); }
  int set_async(int on) override { return c_->set_async(on); }
  void on_error(ErrorHandler handler) override { c_->on_error(std::move(handler)); }
  void set_allocator(const Allocator& a) override { c_->set_allocator(a); }
  int shutdown() override { return c_->shutdown(); }

 private:
  std::shared_ptr<Core> c_;
};

}  // namespace

bool kmod_in_handler() { return k_running > 0; }

std::unique_ptr<Backend> make_kmod_backend(const Policy& policy, int& err, std::string& why) {
  auto c = std::make_shared<Core>(policy);
  err = c->init(why);
  if (err < 0) return nullptr;
  return std::make_unique<KmodBackend>(std::move(c));
}

}  // namespace aem::detail
