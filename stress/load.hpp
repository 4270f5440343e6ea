// SPDX-License-Identifier: MIT
// A stress-ng load that proves it ran.
//
// A phase "under load" is only evidence if the load really ran: stress-ng
// can start (posix_spawnp succeeds) and then abort at once, for example
// when its working directory is read-only. StressNg runs it in a private
// directory under $TMPDIR (or /tmp), with --metrics-brief and --yaml, stops
// it with SIGINT (stress-ng then writes its metrics), and reads the bogo-ops
// and wall-clock time of every stressor back. LoadProof::ran is true only
// when it exited with status 0 and every stressor did work; the harnesses
// put the proof in their JSON and exit 3 (no result) when a requested load
// did not run, so a runner reports the phase as an ERROR, never as a
// verdict.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "common.hpp"

extern char** environ;

namespace stress {

struct LoadProof {
  bool started = false;
  bool ran = false;
  int exit_status = -1;  // stress-ng's exit status; -1: killed or never started
  double wall_s = 0;     // the longest stressor's wall-clock time
  std::vector<std::pair<std::string, uint64_t>> bogo_ops;  // per stressor
  std::string why;                                         // when !ran: what went wrong
  std::string argv;

  void to_json(Json& j, std::string_view key) const {
    j.key(key)
        .begin_obj()
        .kv("tool", "stress-ng")
        .kv("argv", argv)
        .kv("started", started)
        .kv("ran", ran)
        .kv("exit_status", exit_status)
        .kv("wall_s", wall_s);
    j.key("bogo_ops").begin_obj();
    for (auto& [s, n] : bogo_ops) j.kv(s, n);
    j.end_obj();
    if (!ran) j.kv("why", why);
    j.end_obj();
  }
};

class StressNg {
 public:
  StressNg() = default;
  StressNg(const StressNg&) = delete;
  StressNg& operator=(const StressNg&) = delete;
  ~StressNg() {
    if (pid_ > 0) stop();
  }

  // Starts stress-ng with args (stressors and their options); it runs
  // until stop(), at most timeout_s.
  bool start(const std::vector<std::string>& args, double timeout_s) {
    const char* tmp = getenv("TMPDIR");
    dir_ = std::string(tmp && *tmp ? tmp : "/tmp") + "/aem-stress-ng.XXXXXX";
    if (!mkdtemp(dir_.data())) {
      proof_.why = "mkdtemp " + dir_ + ": " + strerror(errno);
      dir_.clear();
      return false;
    }
    std::vector<std::string> v = {"stress-ng"};
    v.insert(v.end(), args.begin(), args.end());
    v.insert(v.end(), {"--timeout", std::to_string(static_cast<long>(timeout_s) + 1) + "s",
                       "--metrics-brief", "--yaml", dir_ + "/metrics.yaml", "--log-file",
                       dir_ + "/stress-ng.log"});
    std::vector<char*> argv;
    for (auto& s : v) {
      argv.push_back(s.data());
      proof_.argv += (proof_.argv.empty() ? "" : " ") + s;
    }
    argv.push_back(nullptr);
    const std::string out = dir_ + "/stdout";
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addchdir_np(&fa, dir_.c_str());
    posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    int rc = posix_spawnp(&pid_, "stress-ng", &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
      pid_ = -1;
      proof_.why = std::string("posix_spawnp stress-ng: ") + strerror(rc);
      return false;
    }
    proof_.started = true;
    return true;
  }

  bool running() const { return pid_ > 0; }

  // Stops it (SIGINT: stress-ng ends its stressors and writes the
  // metrics), then reads the proof.
  LoadProof stop() {
    if (pid_ > 0) {
      kill(pid_, SIGINT);
      int st = 0;
      while (waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
      }
      pid_ = -1;
      proof_.exit_status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
      read_metrics();
      judge();
    }
    cleanup();
    return proof_;
  }

 private:
  pid_t pid_ = -1;
  std::string dir_;
  LoadProof proof_;

  void read_metrics() {
    std::ifstream f(dir_ + "/metrics.yaml");
    std::string line, stressor;
    auto value = [](const std::string& l) { return l.substr(l.find(':') + 1); };
    while (std::getline(f, line)) {
      if (line.find("- stressor:") != std::string::npos) {
        stressor = value(line);
        stressor.erase(0, stressor.find_first_not_of(' '));
      } else if (!stressor.empty() && line.find("bogo-ops:") != std::string::npos) {
        proof_.bogo_ops.emplace_back(stressor, std::stoull(value(line)));
      } else if (!stressor.empty() && line.find("wall-clock-time:") != std::string::npos) {
        proof_.wall_s = std::max(proof_.wall_s, std::stod(value(line)));
      }
    }
  }

  void judge() {
    if (proof_.exit_status != 0) {
      proof_.why = "stress-ng exited with status " + std::to_string(proof_.exit_status) + ": " +
                   tail(dir_ + "/stdout");
      return;
    }
    if (proof_.bogo_ops.empty()) {
      proof_.why = "stress-ng wrote no metrics: " + tail(dir_ + "/stdout");
      return;
    }
    for (auto& [s, n] : proof_.bogo_ops)
      if (n == 0) {
        proof_.why = "stressor " + s + " did no work (0 bogo-ops)";
        return;
      }
    proof_.ran = true;
  }

  static std::string tail(const std::string& path) {
    std::ifstream f(path);
    std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (all.size() > 300) all = all.substr(all.size() - 300);
    for (char& c : all)
      if (c == '\n') c = ' ';
    return all;
  }

  void cleanup() {
    if (dir_.empty()) return;
    for (const char* f : {"/metrics.yaml", "/stress-ng.log", "/stdout"}) unlink((dir_ + f).c_str());
    rmdir(dir_.c_str());
    dir_.clear();
  }
};

}  // namespace stress
