;; A filesystem probe, standing in for a libc program: `fsprobe CMD PATH [TEXT]`.
;; PATH goes through what wasi-libc does with the single preopen "/" (fd 3): leading "/" and
;; "./" are stripped, so "/inputs/x", "inputs/x" and "./inputs/x" all become "inputs/x" on fd 3.
;; A failing WASI call exits with its errno (ENOENT 44, EROFS 69, ...); success exits 0.
;; CMD: c = print the file, w = create/truncate and write TEXT, a = open for writing only,
;;      l = list the directory, m = mkdir, u = unlink, p = print the preopens' names.
(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_readdir" (func $fd_readdir (param i32 i32 i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $fd_prestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_dir_name" (func $fd_prestat_dir_name (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_create_directory" (func $path_create_directory (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_unlink_file" (func $path_unlink_file (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  ;; 0: iovec; 8: result; 12: opened fd; 16..80: argv pointers; 96: "\n"; 100: "."
  ;; 128..1024: argv strings; 4096..12288: data buffer
  (memory (export "memory") 1)
  (data (i32.const 96) "\n")
  (data (i32.const 100) ".")

  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $done (loop $next
      (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $next)))
    (local.get $n))

  (func $arg (param $i i32) (result i32)
    (i32.load (i32.add (i32.const 16) (i32.shl (local.get $i) (i32.const 2)))))

  (func $rel (param $p i32) (result i32)
    (block $done (loop $next
      (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 47))
        (then (local.set $p (i32.add (local.get $p) (i32.const 1))) (br $next)))
      (if (i32.and (i32.eq (i32.load8_u (local.get $p)) (i32.const 46))
                   (i32.eq (i32.load8_u offset=1 (local.get $p)) (i32.const 47)))
        (then (local.set $p (i32.add (local.get $p) (i32.const 2))) (br $next)))))
    (if (i32.eqz (i32.load8_u (local.get $p))) (then (local.set $p (i32.const 100))))
    (local.get $p))

  (func $check (param $errno i32)
    (if (local.get $errno) (then (call $proc_exit (local.get $errno)))))

  (func $out (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (call $check (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))

  (func $open (param $path i32) (param $oflags i32) (param $rights i64) (result i32)
    (call $check (call $path_open (i32.const 3) (i32.const 1)
      (local.get $path) (call $strlen (local.get $path))
      (local.get $oflags) (local.get $rights) (i64.const 0) (i32.const 0) (i32.const 12)))
    (i32.load (i32.const 12)))

  (func (export "_start")
    (local $cmd i32) (local $path i32) (local $fd i32) (local $n i32) (local $off i32) (local $len i32)
    (call $check (call $args_sizes_get (i32.const 8) (i32.const 12)))
    (call $check (call $args_get (i32.const 16) (i32.const 128)))
    (local.set $cmd (i32.load8_u (call $arg (i32.const 1))))
    (local.set $path (call $rel (call $arg (i32.const 2))))

    (if (i32.eq (local.get $cmd) (i32.const 112)) (then ;; p
      (local.set $fd (i32.const 3))
      (block $done (loop $next
        (br_if $done (call $fd_prestat_get (local.get $fd) (i32.const 0)))
        (local.set $len (i32.load (i32.const 4)))
        (call $check (call $fd_prestat_dir_name (local.get $fd) (i32.const 4096) (local.get $len)))
        (call $out (i32.const 4096) (local.get $len))
        (call $out (i32.const 96) (i32.const 1))
        (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
        (br $next)))))

    (if (i32.eq (local.get $cmd) (i32.const 99)) (then ;; c
      (local.set $fd (call $open (local.get $path) (i32.const 0) (i64.const 2)))
      (block $eof (loop $more
        (i32.store (i32.const 0) (i32.const 4096))
        (i32.store (i32.const 4) (i32.const 8192))
        (call $check (call $fd_read (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
        (local.set $n (i32.load (i32.const 8)))
        (br_if $eof (i32.eqz (local.get $n)))
        (call $out (i32.const 4096) (local.get $n))
        (br $more)))))

    (if (i32.eq (local.get $cmd) (i32.const 119)) (then ;; w: O_CREAT|O_TRUNC, FD_WRITE
      (local.set $fd (call $open (local.get $path) (i32.const 9) (i64.const 64)))
      (i32.store (i32.const 0) (call $arg (i32.const 3)))
      (i32.store (i32.const 4) (call $strlen (call $arg (i32.const 3))))
      (call $check (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))))

    (if (i32.eq (local.get $cmd) (i32.const 97)) (then ;; a: FD_WRITE only
      (drop (call $open (local.get $path) (i32.const 0) (i64.const 64)))))

    (if (i32.eq (local.get $cmd) (i32.const 108)) (then ;; l: O_DIRECTORY, FD_READ|FD_READDIR
      (local.set $fd (call $open (local.get $path) (i32.const 2) (i64.const 16386)))
      (call $check (call $fd_readdir (local.get $fd) (i32.const 4096) (i32.const 8192) (i64.const 0) (i32.const 8)))
      (local.set $n (i32.load (i32.const 8)))
      (block $end (loop $entry
        (br_if $end (i32.gt_u (i32.add (local.get $off) (i32.const 24)) (local.get $n)))
        (local.set $len (i32.load (i32.add (i32.const 4112) (local.get $off))))
        (call $out (i32.add (i32.const 4120) (local.get $off)) (local.get $len))
        (call $out (i32.const 96) (i32.const 1))
        (local.set $off (i32.add (local.get $off) (i32.add (i32.const 24) (local.get $len))))
        (br $entry)))))

    (if (i32.eq (local.get $cmd) (i32.const 109)) (then ;; m
      (call $check (call $path_create_directory (i32.const 3)
        (local.get $path) (call $strlen (local.get $path))))))

    (if (i32.eq (local.get $cmd) (i32.const 117)) (then ;; u
      (call $check (call $path_unlink_file (i32.const 3)
        (local.get $path) (call $strlen (local.get $path))))))

    (call $proc_exit (i32.const 0))))
