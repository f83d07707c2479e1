// A real wasi-libc guest: std's fs, env, time and random on top of Cod's WASI layer.
use std::io::{Read, Seek, SeekFrom, Write};
fn main() {
    let args: Vec<String> = std::env::args().collect();
    println!("args={:?}", &args[1..]);
    let mut names: Vec<String> = std::fs::read_dir("/").unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    println!("root={names:?}");
    let text = std::fs::read_to_string("/inputs/x.csv").unwrap();
    println!("input={text:?}");
    let meta = std::fs::metadata("/inputs/x.csv").unwrap();
    println!("len={} file={}", meta.len(), meta.is_file());
    let err = std::fs::write("/inputs/x.csv", "no").unwrap_err();
    println!("ro={:?}", err.raw_os_error());
    std::fs::create_dir_all("/outputs/a/b").unwrap();
    let mut f = std::fs::OpenOptions::new().create(true).read(true).write(true).open("/outputs/a/b/f.txt").unwrap();
    f.write_all(b"hello world").unwrap();
    f.seek(SeekFrom::Start(6)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    println!("seek-read={s:?}");
    drop(f);
    let mut app = std::fs::OpenOptions::new().append(true).open("/outputs/a/b/f.txt").unwrap();
    app.write_all(b"!").unwrap();
    std::fs::rename("/outputs/a/b/f.txt", "/outputs/g.txt").unwrap();
    std::fs::remove_dir("/outputs/a/b").unwrap();
    println!("after={:?}", std::fs::read_to_string("/outputs/g.txt").unwrap());
    let many: Vec<_> = (0..300).map(|i| format!("/outputs/a/n{i:03}")).collect();
    for p in &many { std::fs::write(p, "").unwrap(); }
    println!("listed={}", std::fs::read_dir("/outputs/a").unwrap().count());
    println!("via-link={:?}", std::fs::read_to_string("/outputs/link").unwrap());
    println!("readlink={:?}", std::fs::read_link("/outputs/link").unwrap());
    println!("abs-link={:?}", std::fs::read_to_string("/outputs/abs").map_err(|e| e.raw_os_error()));
    let t0 = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(20));
    println!("slept>=20ms={}", t0.elapsed().as_millis() >= 20);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    println!("realtime-sane={}", now > 1_700_000_000);
    println!("env={:?}", std::env::var("GREETING"));
    let escape = std::fs::read_to_string("/inputs/../../etc/passwd");
    println!("escape={:?}", escape.map_err(|e| e.kind()));
    std::process::exit(7);
}
