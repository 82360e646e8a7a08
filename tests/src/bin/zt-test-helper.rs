//! Small behaviours the integration tests run as "agent" processes. Every
//! form ignores trailing arguments, so tests can add a marker to argv to find
//! the exec event. Connection errors are ignored: the tests look at the
//! connect attempt the kernel saw, not at its outcome.
//!
//! Usage: zt-test-helper <form> [args] [marker...]
//! - connect ADDR
//! - thread-connect ADDR           connect from a second thread
//! - double-fork-connect ADDR      fork, setsid, fork; the grandchild connects after
//!   its parent exited (re-parented)
//! - sleep-connect MS ADDR         sleep, then connect
//! - fork-sleep-connect MS ADDR    sleep, then a forked child connects
//! - escape-connect PROCS ADDR     move to the cgroup whose cgroup.procs is PROCS, connect
//! - stdin-connect ADDR            wait for a line on stdin, then connect
//! - udp-connects N ADDR           N UDP connect() calls as fast as possible
//! - connect-loop MS ADDR...       TCP connects to each ADDR in turn (then 0.5 ms
//!   pause) for MS ms; prints how many attempts were denied (EPERM) and allowed
use std::{io::BufRead, net::TcpStream, time::Duration};

fn connect(addr: &str) {
    let _ = TcpStream::connect_timeout(&addr.parse().expect("ADDR"), Duration::from_secs(2));
}

fn ms(s: &str) -> Duration {
    Duration::from_millis(s.parse().expect("MS"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let a = |i: usize| args.get(i).map(String::as_str).unwrap_or_else(|| panic!("missing argument {i}"));
    match a(1) {
        "connect" => connect(a(2)),
        "thread-connect" => {
            let addr = a(2).to_string();
            std::thread::spawn(move || connect(&addr)).join().unwrap();
        }
        "double-fork-connect" => {
            // SAFETY: single-threaded program; the children only call
            // async-signal-safe functions or exit, apart from the final connect
            // in a process that is itself single-threaded.
            unsafe {
                let pid = libc::fork();
                if pid == 0 {
                    libc::setsid();
                    if libc::fork() == 0 {
                        std::thread::sleep(Duration::from_millis(200));
                        connect(a(2));
                        libc::_exit(0);
                    }
                    libc::_exit(0);
                }
                libc::waitpid(pid, std::ptr::null_mut(), 0);
                // Keep the grandchild's connect inside the test's time window.
                std::thread::sleep(Duration::from_millis(400));
            }
        }
        "sleep-connect" => {
            std::thread::sleep(ms(a(2)));
            connect(a(3));
        }
        "fork-sleep-connect" => {
            std::thread::sleep(ms(a(2)));
            // SAFETY: single-threaded program.
            unsafe {
                let pid = libc::fork();
                if pid == 0 {
                    connect(a(3));
                    libc::_exit(0);
                }
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
        "escape-connect" => {
            std::fs::write(a(2), std::process::id().to_string()).expect("moving to another cgroup");
            connect(a(3));
        }
        "stdin-connect" => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).unwrap();
            connect(a(2));
        }
        "udp-connects" => {
            let n: u64 = a(2).parse().expect("N");
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            for _ in 0..n {
                let _ = sock.connect(a(3));
            }
        }
        "connect-loop" => {
            let until = std::time::Instant::now() + ms(a(2));
            let addrs: Vec<std::net::SocketAddr> =
                args[3..].iter().take_while(|x| !x.starts_with("ZTMARK")).map(|x| x.parse().expect("ADDR")).collect();
            let (mut denied, mut allowed) = (0u64, 0u64);
            while std::time::Instant::now() < until {
                for addr in &addrs {
                    match TcpStream::connect_timeout(addr, Duration::from_millis(500)) {
                        Err(e) if e.raw_os_error() == Some(libc::EPERM) => denied += 1,
                        _ => allowed += 1,
                    }
                }
                // A steady stream, not a flood (a flood is the loss test's job).
                std::thread::sleep(Duration::from_micros(500));
            }
            println!("{denied} {allowed}");
        }
        other => panic!("unknown form {other}"),
    }
}
