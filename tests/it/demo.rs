//! `tandem demo`: the migration story runs from start to end with no setup, and its clusters are gone
//! afterwards; with `--keep` they stay up, usable through the config file it prints, until ctrl-c.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem::cluster::wait_until;
use tokio::io::AsyncReadExt;

/// The ports the demo said its clusters listen on ("desktop on 127.0.0.1:P, cloud on 127.0.0.1:Q").
fn ports(text: &str) -> Vec<u16> {
    let line = text
        .lines()
        .find(|l| l.contains("desktop on 127.0.0.1:"))
        .unwrap_or_else(|| panic!("the demo did not say where its clusters are:\n{text}"));
    line.split("127.0.0.1:")
        .skip(1)
        .map(|p| {
            p.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .unwrap()
        })
        .collect()
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn the_demo_tells_the_migration_story_and_removes_its_clusters() {
    let out = crate::support::output_of(
        Command::new(env!("CARGO_BIN_EXE_tandem")).args(["demo", "--scale", "0.05"]),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "exit {:?}:\n{text}", out.status);
    let mut at = 0;
    for step in tandem::demo::STEPS {
        let found = stdout[at..]
            .find(step)
            .unwrap_or_else(|| panic!("no heading {step:?} (in order):\n{text}"));
        at += found + step.len();
    }
    assert!(
        stdout.contains("synced 15 tables") && stdout.contains("rows sent to the cloud"),
        "no synced-rows line:\n{text}"
    );
    assert_eq!(
        stdout.matches("arrived in").count(),
        3,
        "three edits, each timed:\n{text}"
    );
    assert!(
        stdout.contains("policy latest, outcome merged")
            && stdout.contains("resolved: the desktop version of jobshead"),
        "no resolution line:\n{text}"
    );
    assert!(
        stdout.contains("both sides now agree on job 3: On Hold / Held on the desktop"),
        "{text}"
    );
    assert!(
        stdout.contains("tandem status: "),
        "no status block:\n{text}"
    );
    let ports = ports(&stdout);
    assert_eq!(ports.len(), 2, "{text}");
    for port in ports {
        assert!(
            !listening(port),
            "a demo cluster still listens on {port}:\n{text}"
        );
    }
}

#[tokio::test]
async fn demo_keep_leaves_the_clusters_up_with_a_config_until_ctrl_c() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["demo", "--scale", "0.02", "--keep"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let printed = Arc::new(Mutex::new(String::new()));
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let printed = printed.clone();
        let mut pipe = pipe;
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                printed
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    let text = || printed.lock().unwrap().clone();
    let config_line = |t: &str| {
        t.lines()
            .find_map(|l| l.trim().strip_prefix("config   ").map(str::to_string))
    };
    let waiting = wait_until(Duration::from_secs(240), || async {
        config_line(&text()).is_some()
    })
    .await;
    assert!(waiting, "demo --keep never printed its config:\n{}", text());
    let config = std::path::PathBuf::from(config_line(&text()).unwrap());
    let ports = ports(&text());
    assert!(
        ports.iter().all(|&p| listening(p)),
        "--keep: the clusters are down:\n{}",
        text()
    );
    let status = crate::support::output_of(
        Command::new(env!("CARGO_BIN_EXE_tandem"))
            .arg("-c")
            .arg(&config)
            .arg("status"),
    );
    let shown = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(
        shown.contains("tandem status: ") && shown.contains("15 configured, 15 streaming"),
        "status through the printed config:\n{shown}{}",
        String::from_utf8_lossy(&status.stderr)
    );

    let pid = child.id().expect("the demo runs") as i32;
    // SAFETY: sending SIGINT (ctrl-c) to the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let exit = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap_or_else(|_| panic!("demo --keep did not end on ctrl-c:\n{}", text()))
        .unwrap();
    assert!(exit.success(), "exit {exit:?}:\n{}", text());
    assert!(!config.exists(), "{} is left behind", config.display());
    for port in ports {
        assert!(
            !listening(port),
            "a demo cluster still listens on {port}:\n{}",
            text()
        );
    }
}
