//! The `stack` binary behind `make run` and `make bench`: it starts the components, says where
//! they are, and stops every process it started — whole sessions, so an Envoy that a wrapper
//! such as `func-e run` put in a process group of its own is stopped too.

use std::path::Path;
use std::process::Command;

use e2e::{bin_dir, wait_until, Proc, ResponseExt, WAIT_DEADLINE};
use serde_json::{json, Value};
use stack::proc::{alive, session_members, SpawnOptions};

/// `stack up` with `args` and the filter's client secret in its environment, in its own
/// session, logging to `dir/stack.log`.
fn stack_up(dir: &Path, args: &[String], secret: &str) -> Proc {
    let mut cmd = Command::new(bin_dir().join("stack"));
    cmd.arg("up")
        .arg("--work-dir")
        .arg(dir)
        .args(args)
        .env("INTROSPECTION_CLIENT_SECRET", secret);
    let options = SpawnOptions {
        log: Some(dir.join("stack.log")),
        die_with_parent: false,
    };
    Proc::spawn("stack", cmd, &options).expect("start stack")
}

fn state(proc: &mut Proc, dir: &Path) -> Value {
    let file = dir.join("stack.json");
    let mut found = None;
    wait_until(
        "stack writes its state file",
        e2e::START_DEADLINE * 2,
        || {
            assert!(
                proc.exited().is_none(),
                "stack exited:\n{}",
                proc.log_text()
            );
            found = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            found.is_some()
        },
    );
    found.expect("state")
}

fn pid(state: &Value, component: &str) -> u32 {
    let pid = state[component]["pid"].as_u64().expect("pid");
    u32::try_from(pid).expect("pid fits")
}

#[test]
fn stack_up_serves_then_stops_every_session_on_sigterm() {
    let dir = e2e::work_dir("stack-up");
    // Envoy behind a wrapper that moves it to a process group of its own and does not pass
    // SIGTERM on (it just dies): only a stop of the whole session can end Envoy.
    let wrapper = dir.join("wrapper.sh");
    std::fs::write(
        &wrapper,
        "python3 -c 'import os, sys; os.setpgid(0, 0); os.execvp(sys.argv[1], sys.argv[1:])' \"$@\" &\n\
         wait\n",
    )
    .expect("wrapper");
    let envoy = format!(
        "sh {} {}",
        wrapper.display(),
        e2e::envoy_command().join(" ")
    );
    let hook_out = dir.join("hook.out");
    let plugin = json!({
        "cluster": "authorization_server", "authority": "@authority",
        "client_id": "sr-stack", "client_secret_env": "INTROSPECTION_CLIENT_SECRET",
    });
    let secret = e2e::fresh_secret("s3cret-stack");
    let mut stack = stack_up(
        &dir,
        &[
            "--quiet".into(),
            format!("--wasm={}", e2e::wasm_path().display()),
            format!("--envoy={envoy}"),
            format!("--client=sr-stack:{secret}"),
            format!("--plugin-config={plugin}"),
            "--".into(),
            "sh".into(),
            "-c".into(),
            format!(
                "echo \"$STACK_PORT $STACK_ADMIN_PORT $STACK_AS_PORT $STACK_SR_PORT\" > '{}'",
                hook_out.display()
            ),
        ],
        &secret,
    );
    let state = state(&mut stack, &dir);
    let wrapper_pid = pid(&state, "envoy");
    let pids = [
        pid(&state, "mock_as"),
        pid(&state, "sample_sr"),
        wrapper_pid,
    ];
    wait_until("the wrapper started Envoy", WAIT_DEADLINE, || {
        session_members(wrapper_pid).len() >= 2
    });
    let in_envoy_session = session_members(wrapper_pid);

    // It serves: a token minted at the mock passes Envoy and the filter.
    let as_port = u16::try_from(state["mock_as"]["port"].as_u64().expect("port")).expect("port");
    let port = u16::try_from(
        state["envoy"]["listeners"]["sr_ingress"]
            .as_u64()
            .expect("port"),
    )
    .expect("port");
    let minted = e2e::http::request(
        as_port,
        "POST",
        "/_mock/tokens",
        &[("content-type", b"application/json")],
        b"{\"sub\":\"stack-user\"}",
    )
    .expect("mint");
    let token = minted.json()["token"].as_str().expect("token").to_owned();
    let auth = format!("Bearer {token}");
    let r = e2e::http::request(
        port,
        "GET",
        "/api/users/me",
        &[("authorization", auth.as_bytes())],
        b"",
    )
    .expect("through envoy");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["sub"], "stack-user");

    // The command given after `--` ran once everything was ready, with the ports.
    wait_until("the ready command ran", WAIT_DEADLINE, || {
        std::fs::read_to_string(&hook_out).is_ok_and(|t| t.ends_with('\n'))
    });
    let hook = std::fs::read_to_string(&hook_out).expect("hook output");
    let expected = format!(
        "{port} {} {as_port} {}\n",
        state["envoy"]["admin_port"], state["sample_sr"]["port"]
    );
    assert_eq!(hook, expected);

    // SIGTERM: everything goes, Envoy included, and stack exits 0.
    stack::proc::terminate(stack.pid());
    wait_until("stack exits", WAIT_DEADLINE, || stack.exited().is_some());
    let status = stack.exited().expect("status");
    assert!(status.success(), "{status}:\n{}", stack.log_text());
    for p in pids.iter().chain(&in_envoy_session) {
        assert!(!alive(*p), "process {p} survived stack");
    }
    assert!(!dir.join("stack.json").exists(), "state file left behind");
    let log = std::fs::read_to_string(dir.join("envoy.log")).expect("envoy log");
    assert!(!log.contains(&secret) && !log.contains(&token));
}

#[test]
fn stack_up_stops_everything_when_a_component_dies() {
    let dir = e2e::work_dir("stack-dies");
    let mut stack = stack_up(&dir, &["--quiet".into(), "--components=as,sr".into()], "-");
    let state = state(&mut stack, &dir);
    assert!(state.get("envoy").is_none());
    let (mock, sr) = (pid(&state, "mock_as"), pid(&state, "sample_sr"));
    stack::proc::kill_now(sr);
    wait_until("stack exits", WAIT_DEADLINE, || stack.exited().is_some());
    let status = stack.exited().expect("status");
    assert!(!status.success(), "a dead component is a failure");
    assert!(
        stack.log_text().contains("sample-sr exited"),
        "{}",
        stack.log_text()
    );
    assert!(!alive(mock), "mock-as survived");
}
