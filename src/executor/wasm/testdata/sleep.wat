;; Sleeps for an hour through poll_oneoff on one relative monotonic clock, as wasi-libc's
;; nanosleep does, then exits 0.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; subscription at 0: userdata 0, tag 0 (clock) at 8, clock id 1 (monotonic) at 16,
  ;; timeout (ns) at 24, precision at 32, flags 0 at 40
  (func (export "_start")
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 3600000000000))
    (drop (call $poll_oneoff (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))
