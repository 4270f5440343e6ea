// SPDX-License-Identifier: MIT
// The kmod backend's policy and limits: aem.ko's module parameters,
// /sys/module/aem/parameters/<name>, writable by root only. The conformance
// suite sets them to test a policy; the stress sweep raises max_regs to
// reach 10^6 registrations. KmodParam sets one for its lifetime and puts the
// previous value back on destruction.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <utility>

namespace aemtest {

inline std::string kmod_param_path(const std::string& name) {
  return "/sys/module/aem/parameters/" + name;
}

// True when this process may set the kmod backend's policy (root in the
// guest, the module loaded).
inline bool kmod_policy_writable() {
  return access(kmod_param_path("max_regs").c_str(), W_OK) == 0;
}

inline bool read_kmod_param(const std::string& name, std::string& out) {
  std::ifstream f(kmod_param_path(name));
  return static_cast<bool>(std::getline(f, out));
}

inline bool write_kmod_param(const std::string& name, const std::string& value) {
  int fd = open(kmod_param_path(name).c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = write(fd, value.data(), value.size()) == static_cast<ssize_t>(value.size());
  close(fd);
  return ok;
}

class KmodParam {
 public:
  KmodParam(std::string name, const std::string& value) : name_(std::move(name)) {
    if (!read_kmod_param(name_, saved_)) return;
    ok_ = write_kmod_param(name_, value);
  }
  ~KmodParam() {
    if (ok_) write_kmod_param(name_, saved_);
  }
  KmodParam(const KmodParam&) = delete;
  KmodParam& operator=(const KmodParam&) = delete;
  bool ok() const { return ok_; }
  // The value before this object set it.
  const std::string& saved() const { return saved_; }

 private:
  std::string name_, saved_;
  bool ok_ = false;
};

}  // namespace aemtest
