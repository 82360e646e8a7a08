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
//!   written to file OUT; MODE: tcp, tcp-retry (until allowed, 2 s at most; with the µs it took), udp-sendto, udp-connect, uring-connect,
//!   thread-tcp, double-fork-tcp (the grandchild of a double fork tries),
//!   daemon-tcp (the same, but this process exits at once: the daemon's
//!   parent and grandparent are gone before it tries, once the file
//!   OUT.go exists (5 s at most))
//! - move-try PROCS MODE ADDR OUT  move this process into the cgroup whose
//!   cgroup.procs is PROCS (no fork, no exec), then `try MODE ADDR OUT`
//! - udp-flood-distinct RATE SECS, try-tcp ADDR: see `zt_tests::flood::child_mode`
//! - open-loop MS PATH...          open each PATH in turn for reading as fast as
//!   possible for MS ms; prints how many opens were denied (EPERM) and how
//!   many were not
//! - open-at-loop MS DIR NAME       open DIR, then NAME in it (`openat` on
//!   DIR's descriptor: it follows DIR wherever it is moved) for reading as
//!   fast as possible for MS ms; prints "opened" after the first allowed
//!   open, and at the end when the last allowed open began and when the
//!   first denied (EPERM) one returned ("<ns> <ns>", CLOCK_MONOTONIC, 0
//!   for none)
//! - listen ADDR MS                 accept for MS ms; print how many connections came
//! - connect-loop MS ADDR...       TCP connects to each ADDR in turn (then 0.5 ms
//!   pause) for MS ms; prints how many attempts were denied (EPERM) and allowed
//! - around MODE TARGET OUT         one way around the egress hooks; the result
//!   ("OK", "EPERM", "ERR <errno>") in OUT, nothing if the process was killed.
//!   MODE: raw-udp ADDR (a UDP datagram "zt-around" through a raw socket),
//!   packet-udp ADDR (the same as an IPv4 frame through an AF_PACKET socket
//!   on lo), uring-packet ADDR (the same, the socket made by io_uring
//!   IORING_OP_SOCKET), ping ADDR (an ICMP echo through a ping socket; OK when the reply
//!   came), socketpair (AF_UNIX), ptrace PID (attach, then detach),
//!   process-vm-read PID (8 bytes of its first mapping), proc-mem PID (the same read through /proc/PID/mem), bpf (BPF_MAP_GET_NEXT_ID),
//!   unix-stream PATH, unix-dgram PATH, unix-abstract NAME (send "zt-unix"
//!   over a connected stream, as a datagram, to an abstract name),
//!   unix-relative PATH (change into PATH's directory, connect to its name),
//!   lsrr-msg HOP,ADDR (a UDP datagram "zt-around" to ADDR with a loose
//!   source route via HOP given per message: IP_RETOPTS ancillary data),
//!   lsrr HOP,ADDR (the same, the route set on the socket: IP_OPTIONS),
//!   plain-msg HOP,ADDR (the same datagram without either)
//! - file MODE PATH OUT              one file operation; the result in OUT:
//!   "OK", "OK <bytes read>", "EPERM", "ERR <errno>" (see `files`); MODE:
//!   read, thread-read (opened by a second thread), write (append "zt"), create (O_CREAT|O_EXCL), opath-reopen (O_PATH,
//!   then read through /proc/self/fd/N), openat2 (read, RESOLVE_NO_MAGICLINKS),
//!   uring-read (IORING_OP_OPENAT, then read), unlink, truncate,
//!   rename SRC:DST, link SRC:DST, mkdir, chroot-read ROOT:PATH (chroot to
//!   ROOT, read PATH there), exec (execve PATH "mark" OUT), memfd-exec
//!   (PATH's bytes into a memfd, then fexecve it with "mark" OUT)
//! - mark OUT                        write "RAN" to OUT (what an exec'd copy runs)
use std::{io::BufRead, net::TcpStream, time::Duration};

use zt_tests::monotonic_ns;

fn connect(addr: &str) {
    let _ = TcpStream::connect_timeout(&addr.parse().expect("ADDR"), Duration::from_secs(2));
}

fn ms(s: &str) -> Duration {
    Duration::from_millis(s.parse().expect("MS"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(done) = zt_tests::flood::child_mode(&args) {
        done.expect("flood child mode");
        return;
    }
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
        "open-at-loop" => {
            use std::os::fd::AsRawFd;
            let until = std::time::Instant::now() + ms(a(2));
            let dir = std::fs::File::open(a(3)).expect("DIR");
            let name = std::ffi::CString::new(a(4)).unwrap();
            let (mut last_allowed, mut first_denied) = (0u64, 0u64);
            while std::time::Instant::now() < until {
                let began = monotonic_ns();
                // SAFETY: a descriptor we own and a NUL-terminated name.
                let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
                if fd >= 0 {
                    if last_allowed == 0 {
                        println!("opened");
                    }
                    last_allowed = began;
                    // SAFETY: the descriptor just opened, closed once.
                    unsafe { libc::close(fd) };
                } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) && first_denied == 0 {
                    first_denied = monotonic_ns();
                }
            }
            println!("{last_allowed} {first_denied}");
        }
        "open-loop" => {
            let until = std::time::Instant::now() + ms(a(2));
            let paths: Vec<&String> = args[3..].iter().take_while(|x| !x.starts_with("ZTMARK")).collect();
            let (mut denied, mut allowed) = (0u64, 0u64);
            while std::time::Instant::now() < until {
                for p in &paths {
                    match std::fs::File::open(p) {
                        Err(e) if e.raw_os_error() == Some(libc::EPERM) => denied += 1,
                        _ => allowed += 1,
                    }
                }
            }
            println!("{denied} {allowed}");
        }
        "try" => {
            let (mode, addr, out) = (a(2).to_string(), a(3).to_string(), a(4).to_string());
            let write = |r: String| std::fs::write(&out, r).expect("writing the result");
            match mode.as_str() {
                // Until the connect is allowed (a process held at exec is
                // released): the result, and the microseconds it took.
                "tcp-retry" => {
                    let start = std::time::Instant::now();
                    let r = loop {
                        let r = attempt("tcp", &addr);
                        if r != "EPERM" || start.elapsed() > Duration::from_secs(2) {
                            break r;
                        }
                        std::thread::sleep(Duration::from_micros(50));
                    };
                    write(format!("{r} {}", start.elapsed().as_micros()));
                }
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
                "daemon-tcp" => unsafe {
                    // SAFETY: single-threaded program; the children only attempt and exit.
                    if libc::fork() == 0 {
                        libc::setsid();
                        if libc::fork() == 0 {
                            let go = format!("{out}.go");
                            let until = std::time::Instant::now() + Duration::from_secs(5);
                            while !std::path::Path::new(&go).exists() && std::time::Instant::now() < until {
                                std::thread::sleep(Duration::from_millis(10));
                            }
                            write(attempt("tcp", &addr));
                            libc::_exit(0);
                        }
                        libc::_exit(0);
                    }
                },
                m => write(attempt(m, &addr)),
            }
        }
        "move-try" => {
            std::fs::write(a(2), std::process::id().to_string()).expect("moving to another cgroup");
            std::fs::write(a(5), attempt(a(3), a(4))).expect("writing the result");
        }
        "around" => {
            let (mode, target, out) = (a(2), a(3), a(4));
            std::fs::write(out, around::attempt(mode, target)).expect("writing the result");
        }
        "file" => {
            let (mode, path, out) = (a(2), a(3), a(4));
            // Opened first: `chroot-read` leaves the directory it is in.
            let mut result = std::fs::File::create(out).expect("creating the result file");
            std::io::Write::write_all(&mut result, files::attempt(mode, path, out).as_bytes()).expect("writing the result");
        }
        "mark" => std::fs::write(a(2), "RAN").expect("writing the mark"),
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

/// Ways around the egress hooks (see `around` in the usage).
mod around {
    use std::{io::Error, net::SocketAddrV4};

    fn last() -> String {
        match Error::last_os_error().raw_os_error() {
            Some(libc::EPERM) => "EPERM".into(),
            e => format!("ERR {}", e.unwrap_or(-1)),
        }
    }

    pub fn attempt(mode: &str, target: &str) -> String {
        match mode {
            "raw-udp" => raw_udp(target.parse().expect("IPv4 ADDR")),
            "packet-udp" => packet_udp(target.parse().expect("IPv4 ADDR"), false),
            "uring-packet" => packet_udp(target.parse().expect("IPv4 ADDR"), true),
            "ping" => ping(target.parse().expect("IPv4 ADDR:0")),
            "socketpair" => {
                let mut fds = [0; 2];
                // SAFETY: fds is a valid 2-element array.
                let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
                if r == 0 { "OK".into() } else { last() }
            }
            "ptrace" => {
                let pid: libc::pid_t = target.parse().expect("PID");
                // SAFETY: PTRACE_ATTACH takes no memory arguments.
                if unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0) } != 0 {
                    return last();
                }
                // SAFETY: as above; wait for the stop, then let it go.
                unsafe {
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                    libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
                }
                "OK".into()
            }
            "process-vm-read" => {
                let pid: libc::pid_t = target.parse().expect("PID");
                let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
                let start = usize::from_str_radix(maps.split('-').next().expect("a mapping"), 16).expect("address");
                let mut buf = [0u8; 8];
                let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: 8 };
                let remote = libc::iovec { iov_base: start as *mut libc::c_void, iov_len: 8 };
                // SAFETY: both iovecs describe 8 bytes; the local one is ours.
                let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
                if n == 8 { "OK".into() } else { last() }
            }
            "proc-mem" => {
                use std::os::unix::fs::FileExt as _;
                let pid: libc::pid_t = target.parse().expect("PID");
                let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
                let start = u64::from_str_radix(maps.split('-').next().expect("a mapping"), 16).expect("address");
                let mut buf = [0u8; 8];
                match std::fs::File::open(format!("/proc/{pid}/mem")).and_then(|f| f.read_exact_at(&mut buf, start)) {
                    Ok(()) => "OK".into(),
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => "EPERM".into(),
                    Err(e) => format!("ERR {}", e.raw_os_error().unwrap_or(-1)),
                }
            }
            "unix-stream" | "unix-dgram" | "unix-abstract" | "unix-relative" => unix(mode, target),
            "lsrr" | "lsrr-msg" | "plain-msg" => {
                let (hop, dst) = target.split_once(',').expect("HOP,ADDR");
                let route = match mode {
                    "lsrr" => Route::SocketOption,
                    "lsrr-msg" => Route::PerMessage,
                    _ => Route::None,
                };
                udp_with_route(route, hop.parse().expect("HOP"), dst.parse().expect("ADDR"))
            }
            "bpf" => {
                // union bpf_attr for BPF_MAP_GET_NEXT_ID: start_id, next_id.
                let mut attr = [0u32; 2];
                // SAFETY: the attr buffer is 8 bytes, the size passed.
                let r = unsafe { libc::syscall(libc::SYS_bpf, 12, attr.as_mut_ptr(), 8) };
                if r == 0 { "OK".into() } else { last() }
            }
            other => panic!("unknown mode {other}"),
        }
    }

    /// Where a loose source route goes, if any.
    #[derive(PartialEq)]
    enum Route {
        None,
        /// `setsockopt(IP_OPTIONS)` on the socket.
        SocketOption,
        /// `IP_RETOPTS` ancillary data of the one message.
        PerMessage,
    }

    /// Sends "zt-around" over an unconnected UDP socket to `dst`, with a loose
    /// source route via `hop` as `route` says (the packet goes to `hop`
    /// first). The result is the first call that failed, else "OK".
    fn udp_with_route(route: Route, hop: std::net::Ipv4Addr, dst: SocketAddrV4) -> String {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: dst.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.ip().octets()) },
            sin_zero: [0; 8],
        };
        let mut payload = *b"zt-around";
        let mut iov = libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() };
        // NOP, then LSRR: type 0x83, length 7, pointer 4, the hop.
        let mut opt = [1u8, 0x83, 7, 4, 0, 0, 0, 0];
        opt[4..].copy_from_slice(&hop.octets());
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(opt.len() as u32) } as usize;
        let mut control = vec![0u8; space];
        // SAFETY: msghdr is plain data; every pointer set below outlives the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&sa as *const libc::sockaddr_in).cast_mut().cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if route == Route::SocketOption {
            // SAFETY: the option is valid for the length given.
            if unsafe { libc::setsockopt(fd, libc::IPPROTO_IP, libc::IP_OPTIONS, opt.as_ptr().cast(), opt.len() as u32) } != 0 {
                return last();
            }
        }
        if route == Route::PerMessage {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space;
            // SAFETY: the control buffer holds CMSG_SPACE(len) bytes, room
            // for one header and its data.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_IP;
                (*c).cmsg_type = libc::IP_RETOPTS;
                (*c).cmsg_len = libc::CMSG_LEN(opt.len() as u32) as usize;
                std::ptr::copy_nonoverlapping(opt.as_ptr(), libc::CMSG_DATA(c), opt.len());
            }
        }
        // SAFETY: `msg` describes valid buffers (see above).
        let n = unsafe { libc::sendmsg(fd, &msg, 0) };
        if n == payload.len() as isize { "OK".into() } else { last() }
    }

    /// Sends `zt-unix` to a Unix socket: connected stream to a path, a
    /// datagram to a path, a stream to an abstract name, or a stream to a
    /// path relative to its directory (the helper changes into it first).
    fn unix(mode: &str, target: &str) -> String {
        use std::{
            io::Write,
            os::{
                linux::net::SocketAddrExt,
                unix::net::{SocketAddr, UnixDatagram, UnixStream},
            },
        };
        let sent = match mode {
            "unix-stream" => UnixStream::connect(target).and_then(|mut s| s.write_all(b"zt-unix")),
            "unix-dgram" => UnixDatagram::unbound().and_then(|s| s.send_to(b"zt-unix", target)).map(drop),
            "unix-abstract" => {
                UnixStream::connect_addr(&SocketAddr::from_abstract_name(target).expect("NAME")).and_then(|mut s| s.write_all(b"zt-unix"))
            }
            _ => {
                let p = std::path::Path::new(target);
                std::env::set_current_dir(p.parent().expect("DIR")).expect("chdir");
                UnixStream::connect(p.file_name().expect("NAME")).and_then(|mut s| s.write_all(b"zt-unix"))
            }
        };
        match sent {
            Ok(()) => "OK".into(),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => "EPERM".into(),
            Err(e) => format!("ERR {}", e.raw_os_error().unwrap_or(-1)),
        }
    }

    /// A UDP header and payload for `to` (checksum 0: none, valid for IPv4).
    fn udp(to: SocketAddrV4) -> Vec<u8> {
        let payload = b"zt-around";
        let mut v = Vec::new();
        v.extend_from_slice(&40000u16.to_be_bytes());
        v.extend_from_slice(&to.port().to_be_bytes());
        v.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(payload);
        v
    }

    fn sockaddr_in(to: SocketAddrV4) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: to.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*to.ip()).to_be() },
            sin_zero: [0; 8],
        }
    }

    fn raw_udp(to: SocketAddrV4) -> String {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP) };
        if fd < 0 {
            return last();
        }
        let pkt = udp(to);
        let sa = sockaddr_in(to);
        // SAFETY: the buffer and address are valid for the lengths given.
        let n = unsafe {
            libc::sendto(fd, pkt.as_ptr().cast(), pkt.len(), 0, (&sa as *const libc::sockaddr_in).cast(), size_of_val(&sa) as u32)
        };
        if n < 0 { last() } else { "OK".into() }
    }

    /// The datagram as an IPv4 frame through an `AF_PACKET` socket made
    /// with socket(2), or through io_uring (`IORING_OP_SOCKET`: no syscall).
    fn packet_udp(to: SocketAddrV4, uring: bool) -> String {
        let proto = (libc::ETH_P_IP as u16).to_be() as i32;
        let fd = if uring {
            let mut ring = io_uring::IoUring::new(2).expect("io_uring_setup");
            let sqe = io_uring::opcode::Socket::new(libc::AF_PACKET, libc::SOCK_DGRAM, proto).build();
            // SAFETY: the entry refers to no user memory.
            unsafe { ring.submission().push(&sqe).expect("a free entry") };
            ring.submit_and_wait(1).expect("io_uring_enter");
            let cqe = ring.completion().next().expect("a completion");
            if cqe.result() == -libc::EPERM {
                return "EPERM".into();
            }
            if cqe.result() < 0 {
                return format!("ERR {}", -cqe.result());
            }
            cqe.result()
        } else {
            // SAFETY: plain socket(2); ETH_P_IP in network order.
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, proto) }
        };
        if fd < 0 {
            return last();
        }
        let body = udp(to);
        let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
        ip[2..4].copy_from_slice(&((20 + body.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&to.ip().octets());
        ip.extend_from_slice(&to.ip().octets());
        let sum = ip.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum::<u32>();
        let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        ip.extend_from_slice(&body);
        // SAFETY: a NUL-terminated interface name.
        let ifindex = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        // SAFETY: all-zero is a valid sockaddr_ll; the fields are set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        sll.sll_ifindex = ifindex as i32;
        sll.sll_halen = 6;
        // SAFETY: the buffer and address are valid for the lengths given.
        let n = unsafe {
            libc::sendto(fd, ip.as_ptr().cast(), ip.len(), 0, (&sll as *const libc::sockaddr_ll).cast(), size_of_val(&sll) as u32)
        };
        if n < 0 { last() } else { "OK".into() }
    }

    fn ping(to: SocketAddrV4) -> String {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP) };
        if fd < 0 {
            return last();
        }
        // Echo request: type 8, code 0, checksum (the kernel fills it for ping sockets), id, seq, payload.
        let req = [8u8, 0, 0, 0, 0, 0, 0, 1, b'z', b't'];
        let sa = sockaddr_in(to);
        let tv = libc::timeval { tv_sec: 2, tv_usec: 0 };
        // SAFETY: valid buffers and lengths throughout.
        unsafe {
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&tv as *const libc::timeval).cast(), size_of_val(&tv) as u32);
            if libc::sendto(fd, req.as_ptr().cast(), req.len(), 0, (&sa as *const libc::sockaddr_in).cast(), size_of_val(&sa) as u32) < 0 {
                return last();
            }
            let mut reply = [0u8; 64];
            let n = libc::recv(fd, reply.as_mut_ptr().cast(), reply.len(), 0);
            if n > 0 && reply[0] == 0 { "OK".into() } else { last() }
        }
    }
}

/// File operations for the file and exec tests (see `file` in the usage).
mod files {
    use std::{
        ffi::CString,
        fs::OpenOptions,
        io::{Error, Read, Write},
        os::{fd::FromRawFd, unix::fs::OpenOptionsExt},
    };

    fn result<T>(r: std::io::Result<T>, ok: impl FnOnce(T) -> String) -> String {
        match r {
            Ok(v) => ok(v),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => "EPERM".into(),
            Err(e) => format!("ERR {}", e.raw_os_error().unwrap_or(-1)),
        }
    }

    fn read_all(mut f: std::fs::File) -> std::io::Result<String> {
        let mut s = String::new();
        f.read_to_string(&mut s)?;
        Ok(s)
    }

    fn cstr(s: &str) -> CString {
        CString::new(s).expect("no NUL in the path")
    }

    /// A raw fd result as a File.
    fn fd(r: libc::c_long) -> std::io::Result<std::fs::File> {
        if r < 0 {
            return Err(Error::last_os_error());
        }
        // SAFETY: the syscall returned a new descriptor that nothing else owns.
        Ok(unsafe { std::fs::File::from_raw_fd(r as i32) })
    }

    fn pair(s: &str) -> (&str, &str) {
        s.split_once(':').expect("SRC:DST")
    }

    pub fn attempt(mode: &str, path: &str, out: &str) -> String {
        let done = |r: std::io::Result<()>| result(r, |()| "OK".into());
        let read = |r: std::io::Result<std::fs::File>| result(r.and_then(read_all), |s| format!("OK {s}"));
        match mode {
            "read" => read(std::fs::File::open(path)),
            "thread-read" => {
                let path = path.to_string();
                read(std::thread::spawn(move || std::fs::File::open(path)).join().expect("the reading thread"))
            }
            "write" => done(OpenOptions::new().append(true).open(path).and_then(|mut f| f.write_all(b"zt"))),
            "create" => done(OpenOptions::new().write(true).create_new(true).open(path).map(drop)),
            "opath-reopen" => {
                let p = OpenOptions::new().read(true).custom_flags(libc::O_PATH).open(path);
                read(p.and_then(|p| {
                    use std::os::fd::AsRawFd;
                    std::fs::File::open(format!("/proc/self/fd/{}", p.as_raw_fd()))
                }))
            }
            "openat2" => {
                // struct open_how { u64 flags, mode, resolve }; RESOLVE_NO_MAGICLINKS = 0x02.
                let how: [u64; 3] = [libc::O_RDONLY as u64, 0, 0x02];
                let p = cstr(path);
                // SAFETY: a valid C string and a 24-byte open_how that outlive the call.
                read(fd(unsafe { libc::syscall(libc::SYS_openat2, libc::AT_FDCWD, p.as_ptr(), how.as_ptr(), 24usize) }))
            }
            "uring-read" => {
                let mut ring = match io_uring::IoUring::new(4) {
                    Ok(r) => r,
                    Err(e) => return format!("ERR-URING {e}"),
                };
                let p = cstr(path);
                let entry = io_uring::opcode::OpenAt::new(io_uring::types::Fd(libc::AT_FDCWD), p.as_ptr())
                    .flags(libc::O_RDONLY)
                    .build()
                    .flags(io_uring::squeue::Flags::ASYNC);
                // SAFETY: `p` outlives the submission (we wait for its completion).
                unsafe { ring.submission().push(&entry).expect("queue") };
                ring.submit_and_wait(1).expect("io_uring_enter");
                let res = ring.completion().next().expect("completion").result();
                if res < 0 {
                    return result::<()>(Err(Error::from_raw_os_error(-res)), |()| String::new());
                }
                read(fd(res as libc::c_long))
            }
            "unlink" => done(std::fs::remove_file(path)),
            "truncate" => done(OpenOptions::new().write(true).open(path).and_then(|f| f.set_len(0))),
            "rename" => {
                let (a, b) = pair(path);
                done(std::fs::rename(a, b))
            }
            "link" => {
                let (a, b) = pair(path);
                done(std::fs::hard_link(a, b))
            }
            "mkdir" => done(std::fs::create_dir(path)),
            "chroot-read" => {
                let (root, inner) = pair(path);
                if let Err(e) = std::os::unix::fs::chroot(root).and_then(|()| std::env::set_current_dir("/")) {
                    return result::<()>(Err(e), |()| String::new());
                }
                read(std::fs::File::open(inner))
            }
            "exec" => {
                let argv = [cstr(path), cstr("mark"), cstr(out)];
                let ptrs = [argv[0].as_ptr(), argv[1].as_ptr(), argv[2].as_ptr(), std::ptr::null()];
                // SAFETY: NUL-terminated argv of valid C strings, an empty environment.
                unsafe { libc::execve(argv[0].as_ptr(), ptrs.as_ptr(), [std::ptr::null()].as_ptr()) };
                result::<()>(Err(Error::last_os_error()), |()| String::new())
            }
            "memfd-exec" => {
                let bytes = std::fs::read(path).expect("reading the binary");
                // SAFETY: a valid C string name and flags.
                let m = fd(unsafe { libc::memfd_create(cstr("zt").as_ptr(), 0) } as libc::c_long).expect("memfd_create");
                (&m).write_all(&bytes).expect("filling the memfd");
                let argv = [cstr("memfd"), cstr("mark"), cstr(out)];
                let ptrs = [argv[0].as_ptr(), argv[1].as_ptr(), argv[2].as_ptr(), std::ptr::null()];
                use std::os::fd::AsRawFd;
                // SAFETY: as for execve; the memfd is open.
                unsafe { libc::fexecve(m.as_raw_fd(), ptrs.as_ptr(), [std::ptr::null()].as_ptr()) };
                result::<()>(Err(Error::last_os_error()), |()| String::new())
            }
            other => panic!("unknown file mode {other}"),
        }
    }
}
