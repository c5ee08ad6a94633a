// A persistent pool of worker threads (created once, reused by every call) with dynamic scheduling: tasks are
// claimed from an atomic counter, so uneven tasks (causal tiles) balance themselves. The calling thread works too.
#pragma once
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace hype {

class Pool {
 public:
  static Pool& instance();
  ~Pool();
  /** Total threads doing work, the caller included (>= 1). */
  void resize(int threads);
  int size() const { return int(workers_.size()) + 1; }
  /** Runs fn(task, thread) for task in [0, tasks); thread in [0, size()). Returns when all are done. */
  void run(long tasks, const std::function<void(long, int)>& fn);

 private:
  Pool() = default;
  void workerLoop(int id);
  void work(int id);
  void stopAll();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_, done_;
  const std::function<void(long, int)>* fn_ = nullptr;
  long tasks_ = 0;
  std::atomic<long> next_{0};
  int busy_ = 0;
  unsigned long generation_ = 0;
  bool stop_ = false;
};

/** Sets flush-to-zero and denormals-are-zero for the calling thread; returns the previous control word. */
unsigned setFlushDenormals();
void restoreFloatControl(unsigned saved);

}  // namespace hype
