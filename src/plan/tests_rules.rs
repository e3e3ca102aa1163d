//! Unit tests for the SPEC §2.6 test policy, the §2.8 ties, the §2.9 target and cap, and
//! the plan's lookup methods (SCENARIOS 14, 21, 22).

use super::tests::*;
use super::*;
use crate::config::TestPolicy;
use crate::model::{Cap, EnergyKw, ExecMode, Strategy, Target};
use chrono::Duration;

fn policy(integration: TestPolicy, communication: TestPolicy) -> PlanConfig {
    let mut cfg = config();
    cfg.policy.integration_test = integration;
    cfg.policy.communication_test = communication;
    cfg
}

fn itest(id: &str) -> crate::model::Timeslot {
    with(slot(id, M1, h(0), h(1)), |t| {
        t.integration_test_notification = true
    })
}

#[test]
fn scenario_14_integration_test_is_dry_run_by_default() {
    let p = day(vec![itest("t")]);
    let c = &p.meters[M1][0].command;
    assert_eq!(c.mode, ExecMode::DryRun);
    assert!(
        c.reason.ends_with("[dry-run: integration test policy]"),
        "{}",
        c.reason
    );
}

#[test]
fn test_policy_execute_and_ignore() {
    let exec = policy(TestPolicy::Execute, TestPolicy::DryRun);
    let p = run(vec![itest("t")], &exec, h(0), h(2));
    assert_eq!(p.meters[M1][0].command.mode, ExecMode::Execute);

    let ignore = policy(TestPolicy::Ignore, TestPolicy::Execute);
    let p = run(vec![itest("t")], &ignore, h(0), h(2));
    assert!(p.meters[M1].is_empty());
    let want = ExcludeReason::IgnoredByPolicy {
        policy: TestKind::IntegrationTest,
    };
    assert_eq!(reason_of(&p, "t"), vec![want]);
}

#[test]
fn communication_test_at_either_level_uses_its_policy_and_the_stricter_wins() {
    let per_slot = with(slot("s", M1, h(0), h(1)), |t| {
        t.communication_test = Some(true)
    });
    let notif = with(slot("n", M2, h(0), h(1)), |t| {
        t.notification_communication_test = true
    });
    let cfg = policy(TestPolicy::Execute, TestPolicy::Ignore);
    let p = run(vec![per_slot, notif], &cfg, h(0), h(2));
    let want = ExcludeReason::IgnoredByPolicy {
        policy: TestKind::CommunicationTest,
    };
    assert_eq!(reason_of(&p, "s"), vec![want.clone()]);
    assert_eq!(reason_of(&p, "n"), vec![want]);

    // Both flags: integration = execute, communication = dry-run → dry-run.
    let both = with(itest("b"), |t| t.communication_test = Some(true));
    let cfg = policy(TestPolicy::Execute, TestPolicy::DryRun);
    let c = &run(vec![both], &cfg, h(0), h(2)).meters[M1][0].command;
    assert_eq!(c.mode, ExecMode::DryRun);
    assert!(c.reason.ends_with("[dry-run: communication test policy]"));
}

#[test]
fn a_real_dispatch_governs_over_a_dry_run_test_whatever_the_priority() {
    let real = with(slot("real", M1, h(1), h(2)), |t| t.priority = Some(9));
    let test = itest("test"); // p1, 00:00–01:00
    let test = with(test, |t| t.end_time = h(3));
    let p = day(vec![real, test]);
    assert_eq!(
        shape(&p, M1),
        vec![
            (h(0), h(1), "test".into()),
            (h(1), h(2), "real".into()),
            (h(2), h(3), "test".into())
        ]
    );
    let c = &p.meters[M1][1].command;
    assert_eq!(c.mode, ExecMode::Execute);
    assert!(
        c.reason
            .contains("a real dispatch governs over a dry-run test"),
        "{}",
        c.reason
    );
}

#[test]
fn scenario_21_equal_priority_commitment_then_earliest_start_then_event_id() {
    let vol = with(slot("a-vol", M1, h(0), h(4)), |t| t.is_voluntary = true);
    let com = slot("z-com", M1, h(1), h(3));
    let p = day(vec![vol, com]);
    assert_eq!(p.command_at(M1, h(2)).unwrap().command.event_id, "z-com");
    let r = &p.command_at(M1, h(2)).unwrap().command.reason;
    assert!(r.contains("commitment before voluntary"), "{r}");

    let early = slot("z-early", M1, h(0), h(4));
    let late = slot("a-late", M1, h(1), h(3));
    let p = day(vec![late, early]);
    assert_eq!(shape(&p, M1), vec![(h(0), h(4), "z-early".into())]);

    let b = slot("b", M2, h(0), h(1));
    let a = slot("a", M2, h(0), h(1));
    let p = day(vec![b, a]);
    assert_eq!(shape(&p, M2), vec![(h(0), h(1), "a".into())]);
    assert!(p.meters[M2][0].command.reason.contains("event id order"));
}

fn nomination(energy: EnergyKw, nom: Option<f64>) -> crate::model::Timeslot {
    with(slot("n", M1, h(0), h(1)), |t| {
        t.energy_kw = energy;
        t.nomination_kw = nom;
        t.performance_compensation_cap = Some("up-to-nomination".into());
        t.programs = vec!["PJM-CAPACITY".into()];
    })
}

#[test]
fn scenario_22_maximize_never_exceeds_the_nomination() {
    let mut cfg = config();
    cfg.strategy
        .programs
        .insert("PJM-CAPACITY".into(), Strategy::Maximize);
    let p = run(
        vec![nomination(EnergyKw::Kw(8.0), Some(10.0))],
        &cfg,
        h(0),
        h(2),
    );
    let c = &p.meters[M1][0].command;
    assert_eq!(c.strategy, Strategy::Maximize);
    assert_eq!((c.target, c.limit_kw), (Target::Maximum, Some(10.0)));
    assert_eq!(c.export_allowed_kw, 0.0);

    // The default strategy delivers the award.
    let c = &day(vec![nomination(EnergyKw::Kw(8.0), Some(10.0))]).meters[M1][0].command;
    assert_eq!((c.strategy, c.target), (Strategy::Award, Target::Kw(8.0)));
}

#[test]
fn up_to_nomination_bounds_the_award_and_falls_back_to_energy() {
    let c = &day(vec![nomination(EnergyKw::Kw(12.0), Some(10.0))]).meters[M1][0].command;
    assert_eq!((c.target, c.limit_kw), (Target::Kw(10.0), Some(10.0)));
    let c = &day(vec![nomination(EnergyKw::Kw(7.0), None)]).meters[M1][0].command;
    assert_eq!((c.target, c.limit_kw), (Target::Kw(7.0), Some(7.0)));
    let c = &day(vec![nomination(EnergyKw::Absent, None)]).meters[M1][0].command;
    assert_eq!((c.target, c.limit_kw), (Target::Maximum, None));
}

#[test]
fn caps_set_limit_export_and_margin() {
    let mut cfg = config();
    cfg.export_limit_kw = 7.5;
    cfg.import_margin_kw = 0.8;
    let cap = |id: &str, m: &str, text: Option<&str>| {
        with(slot(id, m, h(0), h(1)), |t| {
            t.performance_compensation_cap = text.map(Into::into)
        })
    };
    let p = run(
        vec![
            cap("site", M1, Some("up-to-site-load")),
            cap("exp", M2, Some("grid-exports-allowed")),
        ],
        &cfg,
        h(0),
        h(2),
    );
    let (s, e) = (&p.meters[M1][0].command, &p.meters[M2][0].command);
    assert_eq!(
        (s.cap, s.limit_kw, s.export_allowed_kw),
        (Cap::UpToSiteLoad, None, 0.0)
    );
    assert_eq!(
        (e.cap, e.limit_kw, e.export_allowed_kw),
        (Cap::GridExportsAllowed, None, 7.5)
    );
    assert_eq!((s.import_margin_kw, e.import_margin_kw), (0.8, 0.8));

    // SPEC §2.9: the default export limit 0 wins over grid-exports-allowed.
    let p = day(vec![cap("exp", M1, Some("grid-exports-allowed"))]);
    assert_eq!(p.meters[M1][0].command.export_allowed_kw, 0.0);
    // SPEC §2.2: an unknown (or absent) cap is the most restrictive.
    let p = day(vec![
        cap("new", M1, Some("pay-as-you-go")),
        cap("none", M2, None),
    ]);
    for m in [M1, M2] {
        let c = &p.meters[m][0].command;
        assert_eq!(
            (c.cap, c.limit_kw, c.export_allowed_kw),
            (Cap::UpToNomination, Some(10.0), 0.0)
        );
    }
}

#[test]
fn command_at_and_next_boundaries() {
    let p = day(vec![slot("a", M1, h(1), h(2)), slot("b", M2, at(90), h(3))]);
    assert_eq!(p.command_at(M1, h(0)), None);
    assert_eq!(p.command_at(M1, h(1)).unwrap().command.event_id, "a");
    assert_eq!(
        p.command_at(&M1.to_uppercase(), at(61))
            .unwrap()
            .command
            .event_id,
        "a"
    );
    assert_eq!(p.command_at("nobody", h(1)), None);
    assert_eq!(p.next_boundary_after(h(0)), Some(h(1)));
    assert_eq!(p.next_boundary_after(h(1)), Some(at(90)));
    assert_eq!(p.next_boundary_after(at(90)), Some(h(2)));
    assert_eq!(p.next_boundary_after(h(2)), Some(h(3)));
    assert_eq!(p.next_boundary_after(h(3)), None);
    assert_eq!(
        p.next_boundary_for(M1, h(1) + Duration::seconds(1)),
        Some(h(2))
    );
    assert_eq!(p.next_boundary_for(M2, h(0)), Some(at(90)));
}

#[test]
fn plan_config_comes_from_the_site_configuration() {
    let text = r#"
        [server]
        listen = "127.0.0.1:8443"
        [auth]
        keys = ["k"]
        [site]
        export_limit_kw = 3.0
        [policy]
        integration_test = "execute"
        [[meters]]
        id = "AAAAAAAA-0000-4000-8000-000000000001"
        device = "bat"
        weight = 2.0
    "#;
    let cfg = crate::config::Config::parse_str(text, std::path::Path::new("t.toml")).unwrap();
    let pc = PlanConfig::from(&cfg);
    assert_eq!(pc.meters[0].weight, 2.0);
    assert_eq!((pc.export_limit_kw, pc.import_margin_kw), (3.0, 0.5));
    let p = run(vec![itest("t")], &pc, h(0), h(2));
    let c = &p.meters["AAAAAAAA-0000-4000-8000-000000000001"][0].command;
    assert_eq!(c.mode, ExecMode::Execute);
}
