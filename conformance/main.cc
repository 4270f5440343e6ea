// main() of aem_conformance: GoogleTest's, plus kernel-log markers.
//
// With AEM_KMSG_MARKERS=1 in the environment (cglcert sets it in the QEMU
// guest), every test is bracketed in the kernel log by
//   aem-test: begin <Suite.Name>
//   aem-test: end <Suite.Name>
// written to /dev/kmsg, so that the runner attributes a WARN, BUG or oops
// to the test during which it happened (ci/cglcert/kmsg.py, as LTP and
// liburing's runners do). Without the variable the suite never touches
// /dev/kmsg; when it cannot be opened the suite says so once and runs on.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <gtest/gtest.h>

namespace {

class KmsgMarkers : public ::testing::EmptyTestEventListener {
 public:
  explicit KmsgMarkers(int fd) : fd_(fd) {}
  ~KmsgMarkers() override { close(fd_); }

  void OnTestStart(const ::testing::TestInfo& t) override { mark("begin", t); }
  void OnTestEnd(const ::testing::TestInfo& t) override { mark("end", t); }

 private:
  void mark(const char* what, const ::testing::TestInfo& t) {
    // One write() is one kernel log record; "<5>" is KERN_NOTICE.
    std::string line = std::string("<5>aem-test: ") + what + " " + t.test_suite_name() + "." +
                       t.name() + "\n";
    if (write(fd_, line.data(), line.size()) < 0 && !warned_) {
      warned_ = true;
      fprintf(stderr, "aem_conformance: writing test markers to /dev/kmsg: %s\n", strerror(errno));
    }
  }
  int fd_;
  bool warned_ = false;
};

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const char* want = getenv("AEM_KMSG_MARKERS");
  if (want && strcmp(want, "1") == 0) {
    int fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
    if (fd < 0)
      fprintf(stderr, "aem_conformance: AEM_KMSG_MARKERS=1 but /dev/kmsg: %s; no test markers\n",
              strerror(errno));
    else
      ::testing::UnitTest::GetInstance()->listeners().Append(new KmsgMarkers(fd));
  }
  return RUN_ALL_TESTS();
}
