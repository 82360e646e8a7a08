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
//! - udp-connects-spread N IP PORT N UDP connect() calls to IP, ports PORT..PORT+N
//! - try MODE ADDR OUT              one attempt, result ("OK", "EPERM" or "ERR <errno>")
//!   written to file OUT; MODE: tcp, udp-sendto, udp-connect, uring-connect,
//!   thread-tcp, double-fork-tcp (the grandchild of a double fork tries)
//! - listen ADDR MS                 accept for MS ms; print how many connections came
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
        "udp-connects-spread" => {
            let n: u16 = a(2).parse().expect("N");
            let base: u16 = a(4).parse().expect("PORT");
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            for i in 0..n {
                let _ = sock.connect((a(3), base + i));
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
        "try" => {
            let (mode, addr, out) = (a(2).to_string(), a(3).to_string(), a(4).to_string());
            let write = |r: String| std::fs::write(&out, r).expect("writing the result");
            match mode.as_str() {
                "thread-tcp" => {
                    let addr2 = addr.clone();
                    let r = std::thread::spawn(move || attempt("tcp", &addr2)).join().unwrap();
                    write(r);
                }
                "double-fork-tcp" => unsafe {
                    // SAFETY: single-threaded program; the children only attempt and exit.
                    let pid = libc::fork();
                    if pid == 0 {
                        libc::setsid();
                        if libc::fork() == 0 {
                            std::thread::sleep(Duration::from_millis(100));
                            write(attempt("tcp", &addr));
                            libc::_exit(0);
                        }
                        libc::_exit(0);
                    }
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                    std::thread::sleep(Duration::from_millis(400));
                },
                m => write(attempt(m, &addr)),
            }
        }
        "listen" => {
            let l = std::net::TcpListener::bind(a(2)).expect("bind");
            l.set_nonblocking(true).unwrap();
            let until = std::time::Instant::now() + ms(a(3));
            let mut n = 0;
            while std::time::Instant::now() < until {
                match l.accept() {
                    Ok(_) => n += 1,
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            println!("{n}");
        }
        other => panic!("unknown form {other}"),
    }
}

fn errno_result(r: std::io::Result<()>) -> String {
    match r {
        Ok(()) => "OK".into(),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => "EPERM".into(),
        // Refused or timed out: the kernel let the attempt out.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNREFUSED) | Some(libc::ETIMEDOUT)) => "OK".into(),
        Err(e) => format!("ERR {}", e.raw_os_error().unwrap_or(-1)),
    }
}

/// One egress attempt by `mode` to `addr`.
fn attempt(mode: &str, addr: &str) -> String {
    let sa: std::net::SocketAddr = addr.parse().expect("ADDR");
    let bind_any = if sa.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    match mode {
        "tcp" => errno_result(TcpStream::connect_timeout(&sa, Duration::from_secs(2)).map(|_| ())),
        "udp-sendto" => {
            let s = std::net::UdpSocket::bind(bind_any).unwrap();
            errno_result(s.send_to(b"x", sa).map(|_| ()))
        }
        "udp-connect" => {
            let s = std::net::UdpSocket::bind(bind_any).unwrap();
            errno_result(s.connect(sa).and_then(|()| s.send(b"x").map(|_| ())))
        }
        "uring-connect" => uring_connect(sa),
        other => panic!("unknown mode {other}"),
    }
}

/// connect(2) submitted as io_uring IORING_OP_CONNECT (forced to an io-wq
/// worker with IOSQE_ASYNC, the path syscall tracing cannot see).
fn uring_connect(sa: std::net::SocketAddr) -> String {
    use std::os::fd::AsRawFd;
    let mut ring = match io_uring::IoUring::new(4) {
        Ok(r) => r,
        Err(e) => return format!("ERR-URING {e}"),
    };
    // socket(AF_INET or AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0).
    let sock = socket2::Socket::new(socket2::Domain::for_address(sa), socket2::Type::STREAM, None).expect("socket(2)");
    // sockaddr_in or sockaddr_in6, with its exact length.
    let addr = socket2::SockAddr::from(sa);
    let entry = io_uring::opcode::Connect::new(io_uring::types::Fd(sock.as_raw_fd()), addr.as_ptr().cast(), addr.len())
        .build()
        .flags(io_uring::squeue::Flags::ASYNC);
    // SAFETY: `addr` and `sock` outlive the submission (we wait for its completion below).
    unsafe { ring.submission().push(&entry).expect("queue") };
    ring.submit_and_wait(1).expect("io_uring_enter");
    let res = ring.completion().next().expect("completion").result();
    if res >= 0 { "OK".into() } else { errno_result(Err(std::io::Error::from_raw_os_error(-res))) }
}
