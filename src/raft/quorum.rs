//! Majority arithmetic (Raft §5.2, §5.3): the value a majority of voters has reached.

/// The largest value that at least `quorum` of `values` are at or above, or `None` when there
/// are fewer than `quorum` values. `values` is reordered.
pub(crate) fn quorum_value(values: &mut [u64], quorum: usize) -> Option<u64> {
    if quorum == 0 || values.len() < quorum {
        return None;
    }
    values.sort_unstable_by(|a, b| b.cmp(a));
    Some(values[quorum - 1])
}

/// How a vote tally stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VoteResult {
    /// A quorum granted.
    Won,
    /// Enough voters refused that a quorum can no longer grant.
    Lost,
    /// Still undecided.
    Pending,
}

/// Tallies `granted` and `rejected` votes among `voters` voters.
pub(crate) fn vote_result(voters: usize, granted: usize, rejected: usize) -> VoteResult {
    let quorum = voters / 2 + 1;
    if granted >= quorum {
        VoteResult::Won
    } else if voters.saturating_sub(rejected) < quorum {
        VoteResult::Lost
    } else {
        VoteResult::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_value_is_the_median_of_a_majority() {
        assert_eq!(quorum_value(&mut [5, 1, 9], 2), Some(5));
        assert_eq!(quorum_value(&mut [5, 1, 9, 7, 2], 3), Some(5));
        assert_eq!(quorum_value(&mut [3], 1), Some(3));
        assert_eq!(quorum_value(&mut [3], 2), None);
    }

    #[test]
    fn vote_result_is_lost_once_a_majority_refused() {
        assert_eq!(vote_result(3, 2, 0), VoteResult::Won);
        assert_eq!(vote_result(3, 1, 1), VoteResult::Pending);
        assert_eq!(vote_result(3, 1, 2), VoteResult::Lost);
        assert_eq!(vote_result(4, 2, 2), VoteResult::Lost);
        assert_eq!(vote_result(1, 1, 0), VoteResult::Won);
    }
}
