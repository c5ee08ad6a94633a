#include "pool.h"

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define HYPE_HAVE_MXCSR 1
#endif

namespace hype {

unsigned setFlushDenormals() {
#ifdef HYPE_HAVE_MXCSR
  unsigned saved = _mm_getcsr();
  _mm_setcsr(saved | 0x8040);  // FTZ (bit 15) | DAZ (bit 6): a new thread starts with both off
  return saved;
#else
  return 0;
#endif
}

void restoreFloatControl(unsigned saved) {
#ifdef HYPE_HAVE_MXCSR
  _mm_setcsr(saved);
#else
  (void)saved;
#endif
}

Pool& Pool::instance() {
  static Pool pool;
  return pool;
}

Pool::~Pool() { stopAll(); }

void Pool::stopAll() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
  stop_ = false;
}

void Pool::resize(int threads) {
  if (threads < 1) threads = 1;
  if (threads == size()) return;
  stopAll();
  for (int i = 1; i < threads; i++) workers_.emplace_back([this, i] { workerLoop(i); });
}

void Pool::work(int id) {
  for (;;) {
    long t = next_.fetch_add(1, std::memory_order_relaxed);
    if (t >= tasks_) break;
    (*fn_)(t, id);
  }
}

void Pool::workerLoop(int id) {
  setFlushDenormals();
  unsigned long seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
    }
    setFlushDenormals();
    work(id);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (--busy_ == 0) done_.notify_one();
    }
  }
}

void Pool::run(long tasks, const std::function<void(long, int)>& fn) {
  if (tasks <= 0) return;
  unsigned saved = setFlushDenormals();  // the caller's (JS thread's) float mode is restored below
  if (workers_.empty() || tasks == 1) {
    for (long t = 0; t < tasks; t++) fn(t, 0);
    restoreFloatControl(saved);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    fn_ = &fn;
    tasks_ = tasks;
    next_.store(0);
    busy_ = int(workers_.size());
    generation_++;
  }
  wake_.notify_all();
  work(0);
  {
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [&] { return busy_ == 0; });
    fn_ = nullptr;
  }
  restoreFloatControl(saved);
}

}  // namespace hype
