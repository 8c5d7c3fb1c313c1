//! Scenario tests of the consensus core, written as stories over the [`super::testkit`].

mod election;
