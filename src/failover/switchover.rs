//! `switchover`: planned role swap with both nodes up; nothing is lost.
