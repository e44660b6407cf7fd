//! The broker's subscription index: every session's topic filters in one tree of topic levels, so
//! that routing a publish costs the topic's depth, not the number of sessions.
//!
//! Matching follows MQTT 3.1.1 §4.7 (and MQTT 5 §4.7), as [`topic::matches`] does for one filter:
//! `+` matches one level (an empty one too), `#` (last) matches the parent level and any below, and
//! a filter starting with a wildcard does not match a topic starting with `$` (AWS IoT's reserved
//! topics). A property test holds the tree to [`topic::matches`] over every filter it holds.
//!
//! Written here rather than taken from a crate: the MQTT crates in use (rumqttc, rumqttd) keep
//! their routers' subscription tables private, and the broker needs the highest QoS per session
//! in one walk.
//!
//! [`topic::matches`]: crate::topic::matches

use std::collections::HashMap;

use rumqttc::QoS;

/// Topic filters and, per filter, the sessions (client ids) holding it with their QoS.
#[derive(Debug, Default)]
pub struct SubscriptionTree {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    /// The next level, by its text (`+` and `#` included, as written in filters).
    children: HashMap<String, Node>,
    /// Sessions whose filter ends at this level.
    subscribers: HashMap<String, QoS>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty()
    }

    /// Removes `client_id` from the filter `levels` below this node, pruning nodes left empty.
    fn remove(&mut self, levels: &[&str], client_id: &str) {
        let Some((level, rest)) = levels.split_first() else {
            self.subscribers.remove(client_id);
            return;
        };
        if let Some(child) = self.children.get_mut(*level) {
            child.remove(rest, client_id);
            if child.is_empty() {
                self.children.remove(*level);
            }
        }
    }

    /// Adds the subscribers of every filter below this node that matches `levels` (the topic's
    /// levels from this node on); `root_of_dollar`: this is the root and the topic starts with `$`.
    fn collect<'a>(
        &'a self,
        levels: &[&str],
        root_of_dollar: bool,
        out: &mut HashMap<&'a str, QoS>,
    ) {
        if !root_of_dollar && let Some(all) = self.children.get("#") {
            // `a/#` matches `a` and everything below it.
            add(out, all);
        }
        let Some((level, rest)) = levels.split_first() else {
            add(out, self);
            return;
        };
        if let Some(exact) = self.children.get(*level) {
            exact.collect(rest, false, out);
        }
        if !root_of_dollar && let Some(any) = self.children.get("+") {
            any.collect(rest, false, out);
        }
    }
}

fn add<'a>(out: &mut HashMap<&'a str, QoS>, node: &'a Node) {
    for (client_id, qos) in &node.subscribers {
        out.entry(client_id.as_str())
            .and_modify(|held| {
                if (*qos as u8) > (*held as u8) {
                    *held = *qos;
                }
            })
            .or_insert(*qos);
    }
}

impl SubscriptionTree {
    /// Records that `client_id` holds `filter` (a valid filter) at `qos`, replacing its QoS if it
    /// held it already.
    pub fn insert(&mut self, filter: &str, client_id: &str, qos: QoS) {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(level.to_owned()).or_default();
        }
        node.subscribers.insert(client_id.to_owned(), qos);
    }

    /// Forgets that `client_id` holds `filter` (nothing when it does not).
    pub fn remove(&mut self, filter: &str, client_id: &str) {
        let levels: Vec<&str> = filter.split('/').collect();
        self.root.remove(&levels, client_id);
    }

    /// The sessions with a filter matching `topic` (a topic name, no wildcards), each with the
    /// highest QoS among its matching filters.
    pub fn matching(&self, topic: &str) -> HashMap<&str, QoS> {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut out = HashMap::new();
        self.root.collect(&levels, topic.starts_with('$'), &mut out);
        out
    }

    /// Whether it holds no filter at all.
    pub fn is_empty(&self) -> bool {
        self.root.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic;
    use proptest::prelude::*;

    fn tree(filters: &[(&str, &str, QoS)]) -> SubscriptionTree {
        let mut tree = SubscriptionTree::default();
        for (filter, client, qos) in filters {
            tree.insert(filter, client, *qos);
        }
        tree
    }

    fn sorted(found: HashMap<&str, QoS>) -> Vec<(String, u8)> {
        let mut v: Vec<_> = found
            .into_iter()
            .map(|(c, q)| (c.to_owned(), q as u8))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn wildcards_match_as_mqtt_says_and_the_highest_qos_of_a_session_wins() {
        let t = tree(&[
            ("sport/tennis/#", "a", QoS::AtMostOnce),
            ("sport/+/player1", "a", QoS::AtLeastOnce),
            ("sport/#", "b", QoS::AtMostOnce),
            ("#", "c", QoS::AtMostOnce),
            ("+/+", "d", QoS::AtLeastOnce),
            (
                "$aws/things/t/shadow/update/accepted",
                "e",
                QoS::AtLeastOnce,
            ),
            ("$aws/things/+/shadow/#", "f", QoS::AtMostOnce),
        ]);
        assert_eq!(
            sorted(t.matching("sport/tennis/player1")),
            vec![("a".into(), 1), ("b".into(), 0), ("c".into(), 0)]
        );
        // `sport/#` matches its parent level; `+/+` an empty level.
        assert_eq!(
            sorted(t.matching("sport")),
            vec![("b".into(), 0), ("c".into(), 0)]
        );
        assert_eq!(
            sorted(t.matching("sport/")),
            vec![("b".into(), 0), ("c".into(), 0), ("d".into(), 1)]
        );
        // Wildcards at the start never match `$` topics; named levels lead into them.
        assert_eq!(
            sorted(t.matching("$aws/things/t/shadow/update/accepted")),
            vec![("e".into(), 1), ("f".into(), 0)]
        );
    }

    #[test]
    fn removing_a_filter_leaves_the_sessions_other_filters_and_prunes_the_tree() {
        let mut t = tree(&[
            ("a/b", "x", QoS::AtLeastOnce),
            ("a/+", "x", QoS::AtMostOnce),
            ("a/b", "y", QoS::AtMostOnce),
        ]);
        t.remove("a/b", "x");
        assert_eq!(
            sorted(t.matching("a/b")),
            vec![("x".into(), 0), ("y".into(), 0)]
        );
        t.remove("a/+", "x");
        t.remove("a/b", "y");
        t.remove("not/held", "y");
        assert!(t.is_empty());
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just(String::new()),
            Just("$aws".to_owned()),
            Just("$x".to_owned()),
        ]
    }

    fn filter() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop_oneof![3 => level(), 1 => Just("+".to_owned())], 0..4),
            any::<bool>(),
        )
            .prop_map(|(mut levels, hash)| {
                if hash || levels.is_empty() {
                    levels.push("#".into());
                }
                levels.join("/")
            })
    }

    fn topic_name() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5).prop_map(|levels| levels.join("/"))
    }

    proptest! {
        #[test]
        fn the_tree_matches_exactly_what_each_filter_matches(
            held in prop::collection::vec((filter(), 0..4usize, any::<bool>()), 0..24),
            removed in prop::collection::vec(0..24usize, 0..8),
            topics in prop::collection::vec(topic_name(), 1..8),
        ) {
            let clients = ["c0", "c1", "c2", "c3"];
            let qos = |q: bool| if q { QoS::AtLeastOnce } else { QoS::AtMostOnce };
            let mut t = SubscriptionTree::default();
            // The brute force: per client, its filters and their QoS (a later insert replaces).
            let mut by_client: HashMap<&str, HashMap<String, QoS>> = HashMap::new();
            for (f, c, q) in &held {
                t.insert(f, clients[*c], qos(*q));
                by_client.entry(clients[*c]).or_default().insert(f.clone(), qos(*q));
            }
            for i in removed {
                if let Some((f, c, _)) = held.get(i) {
                    t.remove(f, clients[*c]);
                    if let Some(filters) = by_client.get_mut(clients[*c]) {
                        filters.remove(f);
                    }
                }
            }
            for name in &topics {
                let mut expected: Vec<(String, u8)> = by_client
                    .iter()
                    .filter_map(|(c, filters)| {
                        filters
                            .iter()
                            .filter(|(f, _)| topic::matches(f, name))
                            .map(|(_, q)| *q as u8)
                            .max()
                            .map(|q| ((*c).to_owned(), q))
                    })
                    .collect();
                expected.sort();
                prop_assert_eq!(sorted(t.matching(name)), expected, "topic {:?}", name);
            }
        }
    }
}
