//! Issue 14 point 3: the upload to Leap against the fake Leap's interval-data endpoints:
//! the CSV passes Leap's row rules, the job id is stored, the job's status and row errors
//! are followed up and shown by `leap-edge intervals uploads`, intervals Leap reports missing
//! are re-sent, and nothing Leap accepted is ever sent again.

use crate::fake_leap;

use chrono::{DateTime, Utc};
use fake_leap::FakeLeap;
use leap_edge::config::Config;
use leap_edge::intervals::{Acc, db, upload};
use leap_edge::leap::LeapClient;
use leap_edge::store::Store;
use serde_json::json;

const KNOWN: &str = "dd21c76c-0000-4000-8000-00000000000a";
const UNKNOWN: &str = "dd21c76c-0000-4000-8000-00000000000b";

fn complete(start: i64, wh: f64) -> Acc {
    Acc {
        start,
        imp_start: Some(1_000.0),
        imp_end: Some(1_000.0 + wh),
        exp_start: Some(50.0),
        exp_end: Some(50.0),
        covered_ms: 900_000,
        ..Acc::default()
    }
}

fn csv_rows(fake: &FakeLeap, job: usize) -> Vec<String> {
    let s = fake.state.lock().unwrap();
    s.intervals.jobs[job]
        .3
        .lines()
        .skip(1)
        .map(String::from)
        .collect()
}

/// A config for the two meters against `fake`, in `dir`; its path.
fn write_config(fake: &FakeLeap, dir: &std::path::Path) -> std::path::PathBuf {
    let db_path = dir.join("leap-edge.db");
    let cfg_text = format!(
        "devices_dir = {:?}\n[server]\nlisten = \"127.0.0.1:8443\"\n[auth]\nkeys = [\"0123456789abcdef0123456789abcdef\"]\n[storage]\npath = {:?}\n\
         [[meters]]\nid = \"{KNOWN}\"\ndevice = \"d1\"\n[[meters]]\nid = \"{UNKNOWN}\"\ndevice = \"d2\"\n\
         [devices.d1]\nprofile = \"sunspec\"\nhost = \"127.0.0.1\"\n[devices.d2]\nprofile = \"sunspec\"\nhost = \"127.0.0.1\"\nunit_id = 2\n{}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/devices"),
        db_path.display().to_string(),
        fake.config()
    );
    let cfg_path = dir.join("config.toml");
    std::fs::write(&cfg_path, &cfg_text).unwrap();
    cfg_path
}

/// A fake Leap, a site config for it in a temporary folder, and a client.
async fn one_site() -> (FakeLeap, tempfile::TempDir, Config, LeapClient) {
    let fake = FakeLeap::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = Config::load(&write_config(&fake, dir.path())).unwrap();
    let client = LeapClient::from_config(&config.leap).unwrap();
    (fake, dir, config, client)
}

/// The store with one complete quarter hour for the known meter, just ended.
async fn one_interval_stored(
    config: &Config,
    now: DateTime<Utc>,
) -> (Store, leap_edge::store::StoreThread) {
    let q = now.timestamp().div_euclid(900) * 900;
    let (store, thread) = Store::open(&config.storage.path).unwrap();
    store
        .call(move |c| db::save(c, KNOWN, &complete(q - 900, 2_500.0), false))
        .await
        .unwrap();
    (store, thread)
}

/// The missing-interval search refused (a key without that access): the day's recent rows
/// go all the same. Before, the whole upload stopped there, every day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_missing_interval_search_does_not_stop_the_upload() {
    let (fake, _dir, config, client) = one_site().await;
    let now = Utc::now();
    let (store, thread) = one_interval_stored(&config, now).await;
    fake.state.lock().unwrap().faults = [(403, None)].into();
    let sum = upload::run_once(&client, &store, &config, now)
        .await
        .expect("the upload goes without the missing-interval search");
    assert_eq!((sum.sent_rows, sum.missing_named), (1, 0), "{sum:?}");
    drop(store);
    thread.closed().await;
}

/// Leap names missing an interval the gateway believed accepted, with the meter id in
/// another case than the configuration's: Leap's word wins and the interval goes again.
/// Before, an accepted row was never sent again, and the case made no id match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_leap_names_missing_goes_again_even_if_believed_accepted() {
    let (fake, _dir, config, client) = one_site().await;
    let now = Utc::now();
    let q = now.timestamp().div_euclid(900) * 900;
    let old = q - 20 * 86_400;
    let (store, thread) = Store::open(&config.storage.path).unwrap();
    store
        .call(move |c| {
            db::save(c, KNOWN, &complete(old, 1_234.0), false)?;
            c.execute("UPDATE intervals SET accepted = 1", [])?;
            Ok(())
        })
        .await
        .unwrap();
    let iso = |s: i64| {
        DateTime::from_timestamp(s, 0)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    {
        let mut s = fake.state.lock().unwrap();
        s.intervals.known_meters = vec![KNOWN.into()];
        s.intervals.missing = vec![
            json!({"meter_id": KNOWN.to_uppercase(), "data_type": "LOAD_DATA",
            "start_date_time_utc": iso(old), "end_date_time_utc": iso(old + 900),
            "submission_deadline_date_time_utc": iso(q + 86_400), "status": "OPEN"}),
        ];
    }
    let sum = upload::run_once(&client, &store, &config, now)
        .await
        .unwrap();
    assert_eq!((sum.sent_rows, sum.missing_named), (1, 1), "{sum:?}");
    let rows = csv_rows(&fake, 0);
    assert!(
        rows.iter()
            .any(|r| r.starts_with(&format!("{KNOWN},{}", iso(old)))),
        "{rows:?}"
    );
    drop(store);
    thread.closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_follow_up_failed_rows_missing_resend_and_never_twice() {
    let fake = FakeLeap::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("leap-edge.db");
    let cfg_path = write_config(&fake, dir.path());
    let config = Config::load(&cfg_path).unwrap();
    let client = LeapClient::from_config(&config.leap).unwrap();

    let now = Utc::now();
    let q = now.timestamp().div_euclid(900) * 900;
    let old = q - 20 * 86_400; // outside the daily window: sent only when Leap says missing
    let (store, thread) = Store::open(&db_path).unwrap();
    store
        .call(move |c| {
            for k in 1..=4 {
                db::save(c, KNOWN, &complete(q - k * 900, 2_500.0), false)?;
                db::save(c, UNKNOWN, &complete(q - k * 900, 1_000.0), false)?;
            }
            db::save(c, KNOWN, &complete(old, 1_234.0), false)?;
            db::save(c, KNOWN, &complete(old + 900, 1_234.0), false)?;
            // The interval still being recorded is never sent.
            db::save(c, KNOWN, &complete(q, 10.0), true)?;
            Ok(())
        })
        .await
        .unwrap();
    let iso = |s: i64| {
        DateTime::from_timestamp(s, 0)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    {
        let mut s = fake.state.lock().unwrap();
        s.intervals.known_meters = vec![KNOWN.into()];
        s.intervals.missing = vec![json!({"meter_id": KNOWN, "data_type": "LOAD_DATA",
            "start_date_time_utc": iso(old), "end_date_time_utc": iso(old + 900),
            "submission_deadline_date_time_utc": iso(q + 86_400), "status": "OPEN"})];
    }

    // Day 1: 4 + 4 recent rows and the one Leap misses; the other old one is not asked for.
    let s1 = upload::run_once(&client, &store, &config, now)
        .await
        .unwrap();
    assert_eq!((s1.sent_rows, s1.missing_named), (9, 1), "{s1:?}");
    let rows = csv_rows(&fake, 0);
    assert!(
        rows.iter()
            .any(|r| r.starts_with(&format!("{KNOWN},{}", iso(old)))),
        "{rows:?}"
    );
    let starts = |t: i64| {
        rows.iter()
            .any(|r| r.starts_with(&format!("{KNOWN},{},", iso(t))))
    };
    assert!(!starts(old + 900), "not missing, not recent: {rows:?}");
    assert!(!starts(q), "open interval sent: {rows:?}");
    assert!(
        rows.contains(&format!(
            "{KNOWN},{},{},2.500,2.500,0.000,true,",
            iso(q - 900),
            iso(q)
        )),
        "{rows:?}"
    );
    {
        let s = fake.state.lock().unwrap();
        let (_, status, errors, _) = &s.intervals.jobs[0];
        assert_eq!(status, "COMPLETED");
        assert_eq!(errors.len(), 4, "the unknown meter's rows: {errors:?}");
        assert!(errors.iter().all(|e| e["code"] == "MTR_0003"));
        assert!(
            s.intervals.missing.is_empty(),
            "Leap got the missing interval"
        );
        let upload = s
            .requests
            .iter()
            .find(|r| r.path == "/v1.1/interval-data")
            .unwrap();
        assert_eq!(upload.headers["content-type"], "text/csv");
    }
    // The same day again, before the follow-up learned anything new: the job is pending
    // until followed up, so nothing is sent twice.
    let s2 = upload::run_once(&client, &store, &config, now)
        .await
        .unwrap();
    assert_eq!(s2.jobs_followed, 1, "{s2:?}");
    assert_eq!(s2.rows_accepted, 5, "known meter's rows accepted: {s2:?}");
    assert_eq!(s2.rows_failed, 4);
    // The refused rows go again (the meter may have been registered since); accepted never.
    let rows = csv_rows(&fake, 1);
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows.iter().all(|r| r.starts_with(UNKNOWN)), "{rows:?}");
    let s3 = upload::run_once(&client, &store, &config, now)
        .await
        .unwrap();
    assert_eq!(s3.sent_rows, 4);
    {
        let s = fake.state.lock().unwrap();
        let mut seen = std::collections::HashSet::new();
        for (m, t) in &s.intervals.accepted {
            assert!(seen.insert((m.clone(), *t)), "accepted twice: {m} {t}");
        }
    }
    // Leap's list stops showing the last job (its id replaced): two days on, its rows go out
    // again instead of waiting for ever. A follow-up that fails (the list answers 503 to
    // every try) neither stops that day's upload nor keeps a job that old pending: before,
    // it did, so a list that failed every day kept its rows from Leap for ever.
    {
        let mut s = fake.state.lock().unwrap();
        let last = s.intervals.jobs.len() - 1;
        s.intervals.jobs[last].0 = "00000000-0000-4000-8000-replacedjob0".into();
        s.faults = std::iter::repeat_n((503, None), 5).collect();
    }
    let later = now + chrono::Duration::days(3);
    let s4 = upload::run_once(&client, &store, &config, later).await;
    let s4 = s4.expect("a failed follow-up is not a failed upload");
    assert_eq!((s4.jobs_followed, s4.sent_rows), (1, 4), "{s4:?}");
    let s5 = upload::run_once(&client, &store, &config, later)
        .await
        .unwrap();
    assert_eq!((s5.jobs_followed, s5.sent_rows), (1, 4), "{s5:?}");
    drop(store);
    thread.closed().await;

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leap-edge"))
        .arg("--config")
        .arg(&cfg_path)
        .args(["intervals", "uploads"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("00000000-0000-4000-8000-000000000001") && text.contains("COMPLETED"),
        "{text}"
    );
    assert!(
        text.contains("MTR_0003") && text.contains("line 2"),
        "{text}"
    );
}

/// A finished job whose row errors Leap lists only in part (its `error_summary` counts
/// more) accepts no row: which were refused cannot be told, so all go again rather than a
/// refused one never again. A job Leap leaves QUEUED or PROCESSING for over two days is not
/// waited for for ever: its rows go again (before, they were held back for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_listed_in_part_or_left_unfinished_does_not_hold_its_rows() {
    let (fake, _dir, config, client) = one_site().await;
    let now = Utc::now();
    let q = now.timestamp().div_euclid(900) * 900;
    let (store, thread) = Store::open(&config.storage.path).unwrap();
    store
        .call(move |c| {
            db::save(c, KNOWN, &complete(q - 900, 2_500.0), false)?;
            db::save(c, UNKNOWN, &complete(q - 900, 1_000.0), false)
        })
        .await
        .unwrap();
    {
        let mut s = fake.state.lock().unwrap();
        s.intervals.known_meters = vec![KNOWN.into()];
        s.intervals.errors_listed_max = Some(0);
    }
    let s1 = upload::run_once(&client, &store, &config, now)
        .await
        .unwrap();
    assert_eq!(s1.sent_rows, 2, "{s1:?}");
    let s2 = upload::run_once(&client, &store, &config, now)
        .await
        .unwrap();
    assert_eq!((s2.jobs_followed, s2.rows_accepted), (1, 0), "{s2:?}");
    assert_eq!(s2.sent_rows, 2, "both rows go again: {s2:?}");
    fake.state.lock().unwrap().intervals.jobs[1].1 = "PROCESSING".into();
    let s3 = upload::run_once(&client, &store, &config, now)
        .await
        .unwrap();
    assert_eq!(
        s3.sent_rows, 0,
        "a job still processing holds its rows: {s3:?}"
    );
    let later = now + chrono::Duration::days(3);
    let s4 = upload::run_once(&client, &store, &config, later)
        .await
        .unwrap();
    assert_eq!((s4.jobs_followed, s4.sent_rows), (1, 2), "{s4:?}");
    drop(store);
    thread.closed().await;
    let c = rusqlite::Connection::open(&config.storage.path).unwrap();
    let mut st = c.prepare("SELECT status FROM interval_uploads").unwrap();
    let statuses: Vec<String> = st
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        statuses.contains(&"COMPLETED (errors not all listed)".to_string()),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&"STUCK (PROCESSING)".to_string()),
        "{statuses:?}"
    );
}

/// Each upload POST creates a job at Leap: one that failed after it may have arrived (a
/// 503) is not sent again in the same run, where a retry could put the same rows in a
/// second job; they go with the next run. A 429 (not processed) is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_post_is_retried_only_when_leap_did_not_take_it() {
    let (fake, _dir, config, client) = one_site().await;
    let now = Utc::now();
    let (store, thread) = one_interval_stored(&config, now).await;
    let posts = |fake: &FakeLeap| fake.requests("/v1.1/interval-data").len();
    {
        let mut s = fake.state.lock().unwrap();
        s.faults_only_on = Some("/v1.1/interval-data".into());
        s.faults = [(503, None)].into();
    }
    let failed = upload::run_once(&client, &store, &config, now).await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(posts(&fake), 1, "a 503 after the POST is not retried");
    fake.state.lock().unwrap().faults = [(429, Some(0))].into();
    let sum = upload::run_once(&client, &store, &config, now)
        .await
        .unwrap();
    assert_eq!(sum.sent_rows, 1, "{sum:?}");
    assert_eq!(posts(&fake), 3, "the 429 was retried");
    drop(store);
    thread.closed().await;
    // The failed upload is listed, with why, so it does not read as "nothing yet"; a 503
    // after the POST may have left a job at Leap, and says so.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leap-edge"))
        .arg("--config")
        .arg(_dir.path().join("config.toml"))
        .args(["intervals", "uploads"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ANSWER LOST") && text.contains("failed after sending"),
        "{text}"
    );
    assert!(text.contains("503"), "{text}");
}
