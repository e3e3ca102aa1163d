//! Routing, pure (SPEC §2.12): which gateway gets which entry of a notification, and the
//! body each gateway receives. A meter entry goes to the gateway serving its meter; a group
//! entry goes whole to every gateway serving at least one of its `meter_ids` (each gateway
//! computes its own share); an entry no gateway serves is unrouted, never dropped.

use super::config::GatewayConfig;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One dispatch entry of a notification, as stored in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    /// `meter_dispatches` or `group_dispatches`.
    pub(crate) array: &'static str,
    pub(crate) index: usize,
    pub(crate) meter_ids: Vec<String>,
    /// The entry exactly as received.
    pub(crate) raw: Value,
}

pub(crate) const ARRAYS: [&str; 2] = ["meter_dispatches", "group_dispatches"];

/// Split a notification (already accepted by the gateway's parser) into its entries.
pub(crate) fn entries(notification: &Value) -> Vec<Entry> {
    let mut out = Vec::new();
    for array in ARRAYS {
        let items = notification.get(array).and_then(Value::as_array);
        for (index, raw) in items.into_iter().flatten().enumerate() {
            let meter_ids = match array {
                "meter_dispatches" => raw
                    .get("meter_id")
                    .and_then(Value::as_str)
                    .map(|m| vec![m.to_string()])
                    .unwrap_or_default(),
                _ => raw
                    .get("meter_ids")
                    .and_then(Value::as_array)
                    .map(|ids| {
                        ids.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            out.push(Entry {
                array,
                index,
                meter_ids,
                raw: raw.clone(),
            });
        }
    }
    out
}

/// Leap meter id (case-insensitive: uuids) → gateway name.
#[derive(Debug, Clone, Default)]
pub(crate) struct Routes(HashMap<String, String>);

impl Routes {
    pub(crate) fn new(gateways: &[GatewayConfig]) -> Routes {
        let mut map = HashMap::new();
        for g in gateways {
            for m in &g.meters {
                map.insert(m.trim().to_ascii_lowercase(), g.name.clone());
            }
        }
        Routes(map)
    }

    /// The gateways an entry goes to (sorted, no repeats); empty = unrouted.
    pub(crate) fn gateways_for(&self, meter_ids: &[String]) -> BTreeSet<String> {
        meter_ids
            .iter()
            .filter_map(|m| self.0.get(&m.trim().to_ascii_lowercase()).cloned())
            .collect()
    }

    /// Per gateway, the indexes (into `entries`) it should receive.
    pub(crate) fn plan(&self, entries: &[Entry]) -> BTreeMap<String, Vec<usize>> {
        let mut out: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, e) in entries.iter().enumerate() {
            for g in self.gateways_for(&e.meter_ids) {
                out.entry(g).or_default().push(i);
            }
        }
        out
    }
}

/// The body one gateway receives: every top-level field unchanged except the two dispatch
/// arrays, which keep only this gateway's entries (an array present in the original stays
/// present, possibly empty, so the body is still a Leap notification).
pub(crate) fn body_for(notification: &Map<String, Value>, chosen: &[&Entry]) -> Value {
    let mut out = Map::new();
    for (k, v) in notification {
        if ARRAYS.contains(&k.as_str()) {
            let kept = chosen
                .iter()
                .filter(|e| e.array == k)
                .map(|e| e.raw.clone())
                .collect();
            out.insert(k.clone(), Value::Array(kept));
        } else {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gw(name: &str, meters: &[&str]) -> GatewayConfig {
        GatewayConfig {
            name: name.into(),
            transport: Default::default(),
            url: "http://127.0.0.1:1/x".into(),
            key: crate::secret::Secret::new("k"),
            header: "x-api-key".into(),
            path: "/leap/dispatch".into(),
            meters: meters.iter().map(|m| m.to_string()).collect(),
            ca: None,
            tls_name: None,
        }
    }

    #[test]
    fn meter_entries_by_meter_groups_whole_to_each_site_unknown_unrouted() {
        let n = json!({
            "integration_test_notification": true, "communication_test": false, "extra": 7,
            "meter_dispatches": [
                {"meter_id": "A1", "timeslots": []},
                {"meter_id": "b1", "timeslots": []},
                {"meter_id": "zz", "timeslots": []},
            ],
            "group_dispatches": [{"meter_ids": ["a2", "B2", "nobody"], "timeslots": []}],
        });
        let routes = Routes::new(&[
            gw("a", &["a1", "A2"]),
            gw("b", &["B1", "b2"]),
            gw("c", &["c1"]),
        ]);
        let es = entries(&n);
        assert_eq!(es.len(), 4);
        let plan = routes.plan(&es);
        assert_eq!(plan["a"], vec![0, 3]);
        assert_eq!(plan["b"], vec![1, 3]);
        assert!(!plan.contains_key("c"));
        assert!(routes.gateways_for(&es[2].meter_ids).is_empty());
        let chosen: Vec<&Entry> = plan["a"].iter().map(|&i| &es[i]).collect();
        let body = body_for(n.as_object().unwrap(), &chosen);
        assert_eq!(body["integration_test_notification"], json!(true));
        assert_eq!(body["extra"], json!(7));
        assert_eq!(
            body["meter_dispatches"],
            json!([{"meter_id": "A1", "timeslots": []}])
        );
        assert_eq!(
            body["group_dispatches"][0]["meter_ids"],
            json!(["a2", "B2", "nobody"])
        );
    }

    #[test]
    fn an_absent_array_stays_absent() {
        let n = json!({"meter_dispatches": [{"meter_id": "a1", "timeslots": []}]});
        let es = entries(&n);
        let body = body_for(n.as_object().unwrap(), &[&es[0]]);
        assert!(body.get("group_dispatches").is_none());
    }
}
