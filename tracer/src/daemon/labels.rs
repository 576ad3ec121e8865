//! A process's identity in series: its name and, when the configuration's `labels` asks for
//! them, the systemd unit and the container it runs in. Processes of one name in different
//! containers (or units) are then different series, each with its own per-process cap.
//!
//! The identity is kept as one string, the three parts joined by NUL, which none of them
//! can hold (`/proc`'s command line splits at NUL, kernel names end at it, and units and
//! container ids are checked to be plain ASCII): without labels it is just the name.

use super::config::Labels;
use crate::naming::cgroup::Placement;

const SEPARATOR: char = '\0';

/// The identity of a process named `name` that runs in `placement`, with the labels on.
pub fn process_key(name: String, placement: &Placement, labels: Labels) -> String {
    if !labels.any() {
        return name;
    }
    let unit = if labels.unit { &placement.unit[..] } else { "" };
    let container = if labels.container {
        &placement.container[..]
    } else {
        ""
    };
    let name = name.replace(SEPARATOR, "");
    format!("{name}{SEPARATOR}{unit}{SEPARATOR}{container}")
}

/// The process name of an identity.
pub fn name_of(key: &str) -> &str {
    key.split(SEPARATOR).next().unwrap_or(key)
}

/// The labels of an identity: `process`, then `unit` and `container` where not empty (an
/// empty label is no label to Prometheus).
pub fn label_pairs(key: &str) -> impl Iterator<Item = (&'static str, &str)> {
    let mut parts = key.split(SEPARATOR);
    let name = parts.next().unwrap_or_default();
    let unit = parts.next().unwrap_or_default();
    let container = parts.next().unwrap_or_default();
    [("process", name), ("unit", unit), ("container", container)]
        .into_iter()
        .enumerate()
        .filter(|&(i, (_, v))| i == 0 || !v.is_empty())
        .map(|(_, pair)| pair)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement() -> Placement {
        Placement {
            unit: "orders.service".into(),
            container: "4f1c2a9b8e7d".into(),
        }
    }

    fn pairs(key: &str) -> Vec<(&'static str, &str)> {
        label_pairs(key).collect()
    }

    #[test]
    fn without_labels_the_identity_is_the_name() {
        let key = process_key("orders".into(), &placement(), Labels::default());
        assert_eq!(key, "orders");
        assert_eq!(name_of(&key), "orders");
        assert_eq!(pairs(&key), [("process", "orders")]);
    }

    #[test]
    fn each_label_on_is_carried_and_empty_ones_are_left_out() {
        let both = Labels {
            unit: true,
            container: true,
        };
        let key = process_key("orders".into(), &placement(), both);
        assert_eq!(name_of(&key), "orders");
        assert_eq!(
            pairs(&key),
            [
                ("process", "orders"),
                ("unit", "orders.service"),
                ("container", "4f1c2a9b8e7d")
            ]
        );
        let container_only = Labels {
            unit: false,
            container: true,
        };
        let key = process_key("orders".into(), &placement(), container_only);
        assert_eq!(
            pairs(&key),
            [("process", "orders"), ("container", "4f1c2a9b8e7d")]
        );
        let nowhere = process_key("orders".into(), &Placement::default(), both);
        assert_eq!(pairs(&nowhere), [("process", "orders")]);
        // The same name in two containers is two identities.
        let other = Placement {
            container: "0123456789ab".into(),
            ..placement()
        };
        assert_ne!(key, process_key("orders".into(), &other, container_only));
    }

    #[test]
    fn a_name_cannot_forge_labels() {
        let both = Labels {
            unit: true,
            container: true,
        };
        let key = process_key("evil\0x.service\0abc".into(), &Placement::default(), both);
        assert_eq!(pairs(&key), [("process", "evilx.serviceabc")]);
    }
}
