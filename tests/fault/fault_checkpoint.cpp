// Fault test: a checkpoint being rewritten survives SIGKILL of its writer.
//
// A child process saves model NEW over a file holding model OLD (tens of MB,
// so the write takes a while) and is killed with SIGKILL after a random
// delay within the measured write time. After every kill:
//   - the file loads with load_checkpoint<float> and its parameters (and
//     configuration) equal OLD or NEW bit for bit, never a mixture or a prefix;
//   - the next successful save (the parent rewrites OLD) leaves no
//     `*.tmp.*` file in the directory: AtomicFileWriter removes the
//     temporary files of the dead writer.
//
//   mtrec_fault_checkpoint WORK_DIR [TRIALS=20] [SEED=random]
// Prints the trial counts (new / old, killed mid-write / old, killed before
// the temporary file existed / finished before the kill) and exits non-zero
// on the first violation.
#include <mtrec/train/checkpoint.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace mtrec;

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void die(const std::string& why) {
  std::fprintf(stderr, "FAIL: %s\n", why.c_str());
  std::fflush(stdout);
  std::exit(1);
}

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) die("cannot open " + dir);
  while (const dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n != "." && n != "..") out.push_back(n);
  }
  ::closedir(d);
  return out;
}

std::vector<std::string> temp_files(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& n : list_dir(dir))
    if (n.find(".tmp.") != std::string::npos) out.push_back(n);
  return out;
}

ModelConfig big_config(std::uint64_t seed) {
  ModelConfig c;
  c.architecture = Architecture::SharedBottom;
  c.seed = seed;
  c.embedding_init_std = 0.05;
  c.features.ids = {{"item", 500000, 0, 16, ""}, {"user", 1000, 0, 8, ""}};  // 8.0M floats: 32 MB
  c.features.dense = {{"age", 1}};
  c.bottom = {8};
  TaskSpec ctr;
  ctr.name = "ctr";
  ctr.tower = {4};
  c.tasks = {ctr};
  return c;
}

bool same_parameters(const MultiTaskModel<float>& a, const MultiTaskModel<float>& b) {
  const auto& pa = a.parameters();
  const auto& pb = b.parameters();
  return pa.size() == pb.size() &&
         std::memcmp(pa.values(), pb.values(), sizeof(float) * std::size_t(pa.size())) == 0;
}

// Forks a writer of `model` over `path` and returns its pid once the child
// is about to call save_checkpoint (it says so through a pipe), so that the
// kill delays measure the save itself, not fork and scheduling latency.
pid_t spawn_writer(const std::string& path, const MultiTaskModel<float>& model) {
  std::fflush(stdout);
  std::fflush(stderr);
  int fds[2];
  if (::pipe(fds) != 0) die("pipe failed");
  const pid_t pid = ::fork();
  if (pid < 0) die("fork failed");
  if (pid == 0) {
    ::close(fds[0]);
    const char go = 1;
    if (::write(fds[1], &go, 1) != 1) ::_exit(4);
    try {
      save_checkpoint(path, model);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: save_checkpoint failed: %s\n", e.what());
      ::_exit(3);
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  char go = 0;
  ssize_t r;
  do r = ::read(fds[0], &go, 1);
  while (r < 0 && errno == EINTR);
  ::close(fds[0]);
  if (r != 1) die("the writer did not start");
  return pid;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s WORK_DIR [TRIALS=20] [SEED]\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  const int trials = argc > 2 ? std::atoi(argv[2]) : 20;
  const std::uint64_t seed = argc > 3 ? std::strtoull(argv[3], nullptr, 10) : std::random_device{}();
  ::mkdir(dir.c_str(), 0777);
  const std::string name = "model.safetensors";
  const std::string path = dir + "/" + name;
  for (const auto& n : list_dir(dir))
    if (n.compare(0, name.size(), name) == 0) (void)::unlink((dir + "/" + n).c_str());

  const auto t0 = Clock::now();
  MultiTaskModel<float> old_model(big_config(1)), new_model(big_config(2));
  if (same_parameters(old_model, new_model)) die("the two models must differ");
  std::printf("fault test: %lld parameters (%.1f MB per checkpoint), %d trials, seed %llu, dir %s\n",
              (long long)old_model.parameters().size(), 4.0 * double(old_model.parameters().size()) / 1e6, trials,
              (unsigned long long)seed, dir.c_str());

  // The writer's time: the median of 3 saves by children that are not killed.
  std::vector<double> times;
  for (int i = 0; i < 3; ++i) {
    save_checkpoint(path, old_model);
    const pid_t pid = spawn_writer(path, new_model);
    const auto c0 = Clock::now();
    int status = 0;
    if (::waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
      die("a calibration writer failed");
    times.push_back(std::chrono::duration<double>(Clock::now() - c0).count());
    auto m = load_checkpoint<float>(path);
    if (!same_parameters(*m, new_model)) die("a calibration save does not load back as NEW");
  }
  std::sort(times.begin(), times.end());
  const double write_s = times[1];
  save_checkpoint(path, old_model);
  std::printf("a child's save takes %.3f s (median of %.3f, %.3f, %.3f); kills come U(0, %.3f) s after it starts\n",
              write_s, times[0], times[1], times[2], write_s);

  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> delay(0.0, write_s);
  int n_new = 0, n_old_mid = 0, n_old_before = 0, n_finished = 0;
  for (int trial = 0; trial < trials; ++trial) {
    const double d = delay(rng);
    const pid_t pid = spawn_writer(path, new_model);
    std::this_thread::sleep_for(std::chrono::duration<double>(d));
    ::kill(pid, SIGKILL);
    int status = 0;
    if (::waitpid(pid, &status, 0) != pid) die("waitpid failed");
    const bool killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
    if (!killed && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
      die("trial " + std::to_string(trial) + ": the writer failed on its own");
    const std::string own_prefix = name + ".tmp." + std::to_string(pid) + ".";
    bool left_temp = false;
    for (const auto& n : temp_files(dir)) left_temp = left_temp || n.compare(0, own_prefix.size(), own_prefix) == 0;

    std::unique_ptr<MultiTaskModel<float>> loaded;
    try {
      loaded = load_checkpoint<float>(path);
    } catch (const std::exception& e) {
      die("trial " + std::to_string(trial) + ": the checkpoint does not load after the kill: " + e.what());
    }
    const bool is_old = same_parameters(*loaded, old_model), is_new = same_parameters(*loaded, new_model);
    if (!is_old && !is_new) die("trial " + std::to_string(trial) + ": the file is neither OLD nor NEW");
    const MultiTaskModel<float>& want = is_old ? old_model : new_model;
    if (!(config_to_json(loaded->config()) == config_to_json(want.config())))
      die("trial " + std::to_string(trial) + ": parameters and configuration come from different saves");
    const char* what;
    if (!killed) {
      ++n_finished;
      what = "finished before the kill";
      if (!is_new) die("a writer that exited 0 left OLD in place");
    } else if (is_new) {
      ++n_new;
      what = "new";
    } else if (left_temp) {
      ++n_old_mid;
      what = "old (killed mid-write, temp file left)";
    } else {
      ++n_old_before;
      what = "old (killed before the temp file existed)";
    }
    if (is_new && left_temp) die("trial " + std::to_string(trial) + ": NEW is in place but the temp file remains");

    // The next successful save removes what the dead writer left.
    save_checkpoint(path, old_model);
    const auto left = temp_files(dir);
    if (!left.empty()) die("trial " + std::to_string(trial) + ": after the next save, '" + left[0] + "' remains");
    std::printf("trial %2d: kill after %.3f s: %s\n", trial, d, what);
  }
  (void)::unlink(path.c_str());  // 32 MB: do not leave it in the build tree
  std::printf("fault test: %d trials: %d new, %d old (killed mid-write), %d old (killed before start), "
              "%d finished before the kill; no temp file after the next save; %.1f s\n",
              trials, n_new, n_old_mid, n_old_before, n_finished,
              std::chrono::duration<double>(Clock::now() - t0).count());
  return 0;
}
