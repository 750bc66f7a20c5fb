//! Reading `synchronous_standby_names`: which standbys a commit waits for
//! and how many of them. Shared by the storage manager's replication
//! monitor and the failover agent's sync record.

/// How many standbys `synchronous_standby_names` makes a commit wait for
/// (`ANY k (..)`, `FIRST k (..)`, `k (..)`; a plain list waits for one).
pub fn required(sync_names: &str) -> usize {
    let text = sync_names.trim();
    let rest = ["ANY", "FIRST"]
        .iter()
        .find_map(|w| {
            let (head, tail) = text.split_at(w.len().min(text.len()));
            head.eq_ignore_ascii_case(w).then_some(tail)
        })
        .unwrap_or(text)
        .trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = rest[digits.len()..].trim_start();
    if !digits.is_empty() && after.starts_with('(') {
        digits.parse().unwrap_or(1)
    } else {
        1
    }
}

/// The standby names in `synchronous_standby_names`.
pub fn members(sync_names: &str) -> Vec<String> {
    let inner = match (sync_names.find('('), sync_names.rfind(')')) {
        (Some(a), Some(b)) if a < b => &sync_names[a + 1..b],
        _ => sync_names,
    };
    inner
        .split(',')
        .map(|n| n.trim().trim_matches('"').to_string())
        .filter(|n| !n.is_empty())
        .collect()
}
