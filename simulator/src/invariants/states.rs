//! Where payments stand: convergence and legality.

use serde_json::Value;

use super::{Check, InvariantResult, Observations, history, history_names, status_of};
use crate::model;

/// 3: nothing left in flight, and reconciliation finds nothing.
pub fn convergence(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 3);
    for (i, receipts) in obs.receipts.iter().enumerate() {
        for receipt in receipts {
            c.checked += 1;
            if let Some(status) = status_of(receipt)
                && !model::is_settled(status)
            {
                c.flow(i, format!("the payment is still {status}"));
            }
        }
    }
    for payment in &obs.in_flight {
        c.other(payment.clone(), "still in flight after the wait".into());
    }
    match &obs.reconcile {
        Ok(left_over) => {
            for entry in left_over {
                c.other(
                    "reconciliation".into(),
                    format!("the receipt disagrees with the bank: {entry}"),
                );
            }
        }
        Err(e) => c.other("reconciliation".into(), format!("could not run: {e}")),
    }
    c.done()
}

/// Whether a payment as the API shows it is legal: its status is one of
/// [`PaymentStatus::ALL`], and its history a path of the state diagram
/// ending there.
fn legal(payment: &Value) -> Result<(), String> {
    if status_of(payment).is_none() {
        return Err(format!(
            "the status {} is not a known one",
            payment["status"]
        ));
    }
    let steps = history(payment);
    if steps.len() != history_names(payment).len() {
        return Err("the history names an unknown status".into());
    }
    model::check_history(&steps)?;
    if steps.last().copied() != status_of(payment) {
        return Err("the history does not end at the status".into());
    }
    Ok(())
}

/// 7: every receipt's history is a path of the state diagram; so is every
/// payment a read showed while the plan ran (`GET /v1/payments/{id}`
/// answering 200, and each payment an order's list showed).
pub fn legality(obs: &Observations) -> InvariantResult {
    let mut c = Check::new(obs, 7);
    for (i, receipts) in obs.receipts.iter().enumerate() {
        for receipt in receipts {
            c.checked += 1;
            if let Err(e) = legal(receipt) {
                c.flow(i, e);
            }
        }
    }
    for (i, flow) in obs.flows.iter().enumerate() {
        for read in &flow.reads {
            for payment in &read.payments_shown() {
                c.checked += 1;
                if let Err(e) = legal(payment) {
                    c.flow(i, format!("{}: {e}", read.describe()));
                }
            }
        }
    }
    c.done()
}
