//! `simulator bench --mix`: each client runs what FicMart's checkout and
//! its back office do with a payment, a whole flow per payment, instead of
//! authorizations alone.
//!
//! A flow: authorize; read the payment by id (the confirmation page);
//! capture it (the order ships) or void it (the order is cancelled); list
//! the order's payments (the order page); refund a share of the captured
//! ones (returns); list the customer's payments (their history). Which
//! steps a flow takes is drawn from a seed, flow by flow, so a seed gives
//! the same plan whatever the concurrency.
//!
//! The proportions are this bench's choice, not measurements of FicMart's
//! traffic; they are constants here so that a run can be compared with
//! another, and `--json` repeats them.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{AuthorizeRequest, Card, IdempotencyKey, Page, RetryPolicy};
use futures_util::FutureExt;
use serde::Serialize;

use crate::bank::NewCard;
use crate::bench::{AMOUNT_CENTS, Op, Operation, SendOne, card_index, client_error_kind, run_id};

/// Of the authorized payments, the share captured; the rest are voided.
/// Most orders ship; about one in five is cancelled before it does
/// (stock-outs, the customer changing their mind, a fraud review), and a
/// cancelled order's authorization is released, not left to expire.
pub const CAPTURE_PERCENT: u64 = 80;
/// Of the captured payments, the share refunded: returns. Online retail
/// sees returns of 10–30 % of orders, many of them exchanges that are
/// not refunded; 10 % of captures is the low end. Refunds are of the full
/// amount: the gateway refunds nothing else (partial refunds are refused,
/// see the API), so there is no partial share.
pub const REFUND_PERCENT_OF_CAPTURED: u64 = 10;
/// Of all payments, the share whose order page lists the order's payments
/// (`GET /v1/payments?order_id=…`) after the capture or void: about every
/// other order is looked at again, by the customer or by support.
pub const LIST_BY_ORDER_PERCENT: u64 = 50;
/// Of all payments, the share after which the customer's payment history
/// is listed (`GET /v1/payments?customer_id=…`, first page).
pub const LIST_BY_CUSTOMER_PERCENT: u64 = 50;
// Every flow reads its payment by id once (the confirmation page), so a
// flow makes 1 + 0.5 + 0.5 = 2 reads on average: about as many reads as
// writes (1 authorize, 1 capture or void, 0.08 refunds), as in a checkout
// whose pages each read the payment once.

/// What one flow does after its authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowPlan {
    /// Capture (true) or void (false).
    pub capture: bool,
    /// Refund after the capture (only with `capture`).
    pub refund: bool,
    pub list_by_order: bool,
    pub list_by_customer: bool,
}

impl FlowPlan {
    /// Flow `flow` of the run with `seed`: the same pair, the same plan.
    pub fn draw(seed: u64, flow: u64) -> Self {
        let mut state = seed ^ flow.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut percent = || splitmix64(&mut state) % 100;
        let capture = percent() < CAPTURE_PERCENT;
        let refund = percent() < REFUND_PERCENT_OF_CAPTURED && capture;
        let list_by_order = percent() < LIST_BY_ORDER_PERCENT;
        let list_by_customer = percent() < LIST_BY_CUSTOMER_PERCENT;
        Self {
            capture,
            refund,
            list_by_order,
            list_by_customer,
        }
    }

    /// Requests that wait at the bank: the authorization, the capture or
    /// void, and the refund.
    pub fn bank_calls(&self) -> u64 {
        2 + u64::from(self.refund)
    }

    /// Every request of the flow, in the order it sends them.
    pub fn operations(&self) -> Vec<Operation> {
        let mut ops = vec![Operation::Authorize, Operation::Get];
        ops.push(if self.capture {
            Operation::Capture
        } else {
            Operation::Void
        });
        if self.list_by_order {
            ops.push(Operation::ListByOrder);
        }
        if self.refund {
            ops.push(Operation::Refund);
        }
        if self.list_by_customer {
            ops.push(Operation::ListByCustomer);
        }
        ops
    }
}

/// Steele, Lea and Flood's SplitMix64: a tiny, well-mixed generator whose
/// output does not depend on any crate's version.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The most flows per second `concurrency` clients can complete when each
/// request that reaches the bank waits `added_latency_ms` there: the
/// authorization ceiling over the mean bank calls per flow of `plans`
/// (reads do not wait at the bank). `None` without added latency.
pub fn ceiling(concurrency: u32, added_latency_ms: u64, plans: &[FlowPlan]) -> Option<f64> {
    let per_request = crate::report::ceiling(concurrency, added_latency_ms)?;
    if plans.is_empty() {
        return None;
    }
    let calls: u64 = plans.iter().map(FlowPlan::bank_calls).sum();
    Some(per_request * plans.len() as f64 / calls as f64)
}

/// The proportions of the mix, as the report repeats them.
#[derive(Debug, Clone, Serialize)]
pub struct Proportions {
    pub capture_percent: u64,
    pub void_percent: u64,
    pub refund_percent_of_captured: u64,
    pub get_by_id_per_flow: u64,
    pub list_by_order_percent: u64,
    pub list_by_customer_percent: u64,
}

pub fn proportions() -> Proportions {
    Proportions {
        capture_percent: CAPTURE_PERCENT,
        void_percent: 100 - CAPTURE_PERCENT,
        refund_percent_of_captured: REFUND_PERCENT_OF_CAPTURED,
        get_by_id_per_flow: 1,
        list_by_order_percent: LIST_BY_ORDER_PERCENT,
        list_by_customer_percent: LIST_BY_CUSTOMER_PERCENT,
    }
}

/// Flow `i` through the gateway, by the `ficmart-client` crate with one
/// attempt per request (a bench measures answers, not retries): payment
/// `i` of [`AMOUNT_CENTS`] for order `i`, on card `i mod cards` (one
/// customer per card), each POST with its own idempotency key. A flow
/// stops at its first failed request: what follows depends on it.
pub fn gateway_flows(
    gateway_url: &str,
    api_key: &str,
    cards: &[NewCard],
    timeout: Duration,
    seed: u64,
) -> anyhow::Result<SendOne> {
    let gateway = client::Client::new([gateway_url], api_key)?.with_retry_policy(RetryPolicy {
        max_attempts: 1,
        deadline: timeout,
        attempt_timeout: timeout,
        ..RetryPolicy::default()
    });
    let cards: Arc<Vec<Card>> = Arc::new(
        cards
            .iter()
            .map(|card| {
                Card::new(
                    card.card_number.clone(),
                    card.cvv.clone(),
                    u8::try_from(card.expiry_month).unwrap_or_default(),
                    u16::try_from(card.expiry_year).unwrap_or_default(),
                )
            })
            .collect(),
    );
    let run = run_id();
    Ok(Arc::new(move |i| {
        let plan = FlowPlan::draw(seed, i);
        let card = card_index(i, cards.len());
        let order = format!("ord_bench_{run}_{i}");
        let customer = format!("cus_bench_{card}");
        let request = AuthorizeRequest::usd(
            order.clone(),
            customer.clone(),
            AMOUNT_CENTS,
            cards[card].clone(),
        );
        let key = {
            let run = run.clone();
            move |op: &str| {
                IdempotencyKey::new(format!("bench-{run}-{i}-{op}"))
                    .map_err(|e| format!("bad key: {e}"))
            }
        };
        let gateway = gateway.clone();
        async move {
            let mut ops = Vec::new();
            let Some(payment) = step(&mut ops, Operation::Authorize, async {
                gateway
                    .authorize(&key("authorize")?, &request)
                    .await
                    .map_err(|e| client_error_kind(&e))
            })
            .await
            else {
                return ops;
            };
            let id = payment.id;
            if step(&mut ops, Operation::Get, async {
                gateway.get(&id).await.map_err(|e| client_error_kind(&e))
            })
            .await
            .is_none()
            {
                return ops;
            }
            let settled = if plan.capture {
                step(&mut ops, Operation::Capture, async {
                    gateway
                        .capture(&key("capture")?, &id)
                        .await
                        .map_err(|e| client_error_kind(&e))
                })
                .await
            } else {
                step(&mut ops, Operation::Void, async {
                    gateway
                        .void(&key("void")?, &id)
                        .await
                        .map_err(|e| client_error_kind(&e))
                })
                .await
            };
            if settled.is_none() {
                return ops;
            }
            if plan.list_by_order {
                let listed = step(&mut ops, Operation::ListByOrder, async {
                    let list = gateway
                        .list_by_order(&order, &Page::default())
                        .await
                        .map_err(|e| client_error_kind(&e))?;
                    // An order has one payment: it must be there.
                    if list.data.iter().any(|p| p.id == id) {
                        Ok(())
                    } else {
                        Err("payment missing from its order's list".to_owned())
                    }
                })
                .await;
                if listed.is_none() {
                    return ops;
                }
            }
            if plan.refund
                && step(&mut ops, Operation::Refund, async {
                    gateway
                        .refund(&key("refund")?, &id)
                        .await
                        .map_err(|e| client_error_kind(&e))
                })
                .await
                .is_none()
            {
                return ops;
            }
            if plan.list_by_customer {
                step(&mut ops, Operation::ListByCustomer, async {
                    gateway
                        .list_by_customer(&customer, &Page::default())
                        .await
                        .map_err(|e| client_error_kind(&e))
                })
                .await;
            }
            ops
        }
        .boxed()
    }))
}

/// Sends one request of a flow, records it in `ops`, and gives its
/// answer when it was the one expected.
async fn step<T>(
    ops: &mut Vec<Op>,
    operation: Operation,
    request: impl Future<Output = Result<T, String>>,
) -> Option<T> {
    let sent = Instant::now();
    let result = request.await;
    let done = Instant::now();
    let (outcome, answer) = match result {
        Ok(answer) => (Ok(()), Some(answer)),
        Err(kind) => (Err(kind), None),
    };
    ops.push(Op {
        operation,
        sent,
        done,
        outcome,
    });
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_plan_and_another_seed_another() {
        let plans = |seed| {
            (0..200)
                .map(|i| FlowPlan::draw(seed, i))
                .collect::<Vec<_>>()
        };
        assert_eq!(plans(7), plans(7));
        assert_ne!(plans(7), plans(8));
    }

    #[test]
    fn the_proportions_are_the_constants() {
        let n = 100_000;
        let plans: Vec<FlowPlan> = (0..n).map(|i| FlowPlan::draw(42, i)).collect();
        let share = |count: usize, of: usize| count as f64 * 100.0 / of as f64;
        let captured = plans.iter().filter(|p| p.capture).count();
        let refunded = plans.iter().filter(|p| p.refund).count();
        let by_order = plans.iter().filter(|p| p.list_by_order).count();
        let by_customer = plans.iter().filter(|p| p.list_by_customer).count();
        let close = |got: f64, want: u64| (got - want as f64).abs() < 1.0;
        assert!(close(share(captured, plans.len()), CAPTURE_PERCENT));
        assert!(close(share(refunded, captured), REFUND_PERCENT_OF_CAPTURED));
        assert!(close(share(by_order, plans.len()), LIST_BY_ORDER_PERCENT));
        assert!(close(
            share(by_customer, plans.len()),
            LIST_BY_CUSTOMER_PERCENT
        ));
        assert!(
            plans.iter().all(|p| p.capture || !p.refund),
            "only a captured payment is refunded"
        );
        // About two reads per payment.
        let reads: usize = plans
            .iter()
            .map(|p| p.operations().iter().filter(|op| op.is_read()).count())
            .sum();
        let per_flow = reads as f64 / plans.len() as f64;
        assert!((per_flow - 2.0).abs() < 0.02, "{per_flow} reads per flow");
    }

    #[test]
    fn a_flow_sends_its_requests_in_checkout_order() {
        let everything = FlowPlan {
            capture: true,
            refund: true,
            list_by_order: true,
            list_by_customer: true,
        };
        assert_eq!(
            everything.operations(),
            [
                Operation::Authorize,
                Operation::Get,
                Operation::Capture,
                Operation::ListByOrder,
                Operation::Refund,
                Operation::ListByCustomer
            ]
        );
        let cancelled = FlowPlan {
            capture: false,
            refund: false,
            list_by_order: false,
            list_by_customer: false,
        };
        assert_eq!(
            cancelled.operations(),
            [Operation::Authorize, Operation::Get, Operation::Void]
        );
        assert_eq!(everything.bank_calls(), 3);
        assert_eq!(cancelled.bank_calls(), 2);
    }

    #[test]
    fn the_ceiling_divides_by_the_bank_calls_of_a_flow() {
        let plan = |refund| FlowPlan {
            capture: true,
            refund,
            list_by_order: true,
            list_by_customer: true,
        };
        // 100 clients, 1 s per bank call: 100 bank calls/s; flows of 2, 2,
        // 2 and 3 calls (2.25 on average): 44.4 flows/s.
        let plans = [plan(false), plan(false), plan(false), plan(true)];
        let ceiling = ceiling(100, 1_000, &plans).unwrap();
        assert!((ceiling - 100.0 / 2.25).abs() < 1e-9, "{ceiling}");
        assert_eq!(super::ceiling(100, 0, &plans), None);
        assert_eq!(super::ceiling(100, 1_000, &[]), None);
    }
}
