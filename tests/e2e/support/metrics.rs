//! Reading counters out of Prometheus / OpenMetrics text.

/// Sum of every sample of `name` (over all label sets); `None` when the
/// exposition has no sample of that name.
pub fn sum(exposition: &str, name: &str) -> Option<f64> {
    let mut total = None;
    for line in exposition.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let values = if let Some(labelled) = rest.strip_prefix('{') {
            match labelled.rfind('}') {
                Some(end) => &labelled[end + 1..],
                None => continue,
            }
        } else if rest.starts_with([' ', '\t']) {
            rest
        } else {
            // A longer name with this one as prefix (`x_total` vs `x_total_created`).
            continue;
        };
        if let Some(value) = values.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) {
            *total.get_or_insert(0.0) += value;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const TEXT: &str = "\
# HELP stead_controller_reconciles Reconciles run.
# TYPE stead_controller_reconciles counter
stead_controller_reconciles_total{result=\"ok\"} 41
stead_controller_reconciles_total{result=\"error\"} 1
stead_controller_reconciles_total_created 1.7e9
stead_controller_status_writes_total 7 1700000000
stead_controller_child_applies_total{kind=\"StatefulSet\",note=\"a } in a label\"} 3
stead_controller_child_applies_total{kind=\"Service\"} 6
# EOF
";

    #[test]
    fn sums_every_label_set_and_ignores_longer_names() {
        assert_eq!(sum(TEXT, "stead_controller_reconciles_total"), Some(42.0));
        assert_eq!(sum(TEXT, "stead_controller_status_writes_total"), Some(7.0));
        assert_eq!(sum(TEXT, "stead_controller_child_applies_total"), Some(9.0));
    }

    #[test]
    fn absent_metric_is_none() {
        assert_eq!(sum(TEXT, "stead_controller_reconcile"), None);
        assert_eq!(sum(TEXT, "stead_controller_errors_total"), None);
        assert_eq!(sum("", "x"), None);
    }
}
