//! Property: whatever concurrent mix of operations runs over a few cards,
//! the ledger verifies and every balance equals what a simple model
//! computes from the answers the bank gave.

use std::collections::HashMap;
use std::sync::OnceLock;

use futures_util::future::join_all;
use proptest::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::runtime::Runtime;

use crate::helpers::*;

const CARDS: usize = 3;
const OPENING_BALANCE: i64 = 10_000;

#[derive(Debug, Clone)]
enum Op {
    Authorize {
        card: usize,
        amount: i64,
    },
    /// Operations on "the n-th authorization so far" (modulo how many exist).
    Capture {
        authorization: usize,
    },
    Void {
        authorization: usize,
    },
    Expire {
        authorization: usize,
    },
    Refund {
        capture: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..CARDS, 1..6_000i64).prop_map(|(card, amount)| Op::Authorize { card, amount }),
        2 => any::<usize>().prop_map(|authorization| Op::Capture { authorization }),
        1 => any::<usize>().prop_map(|authorization| Op::Void { authorization }),
        1 => any::<usize>().prop_map(|authorization| Op::Expire { authorization }),
        1 => any::<usize>().prop_map(|capture| Op::Refund { capture }),
    ]
}

/// What the model knows: authorizations by id with (card, amount), captures.
#[derive(Default)]
struct Model {
    authorizations: Vec<(String, usize, i64)>,
    captures: Vec<(String, usize, i64)>,
    /// Per card: (balance, held).
    cards: HashMap<usize, (i64, i64)>,
    /// Authorizations that left `active`, by the operation that won.
    used: HashMap<String, &'static str>,
}

impl Model {
    fn settle(&mut self, authorization: &str, how: &'static str) -> (usize, i64) {
        let previous = self.used.insert(authorization.to_owned(), how);
        assert!(
            previous.is_none(),
            "{authorization} left `active` twice: {previous:?} then {how}"
        );
        let (_, card, amount) = self
            .authorizations
            .iter()
            .find(|(id, ..)| id == authorization)
            .cloned()
            .unwrap();
        self.cards.entry(card).or_default().1 -= amount;
        (card, amount)
    }
}

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new().unwrap())
}

fn bank() -> &'static TestBank {
    static BANK: OnceLock<TestBank> = OnceLock::new();
    BANK.get_or_init(|| runtime().block_on(spawn_bank()))
}

/// Luhn-valid 16-digit numbers unique to this process.
fn fresh_card() -> String {
    let body = format!("4{:014}", rand_digits());
    let digits: Vec<u32> = body.chars().map(|c| c.to_digit(10).unwrap()).collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

fn rand_digits() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = u64::from(std::process::id()) * 1_000_000;
    (base + NEXT.fetch_add(1, Ordering::Relaxed)) % 100_000_000_000_000
}

async fn run_op(
    bank: &TestBank,
    cards: &[String],
    model: &Model,
    op: &Op,
) -> (Op, StatusCode, Value) {
    let authorization = |index: usize| pick(&model.authorizations, index);
    let response = match *op {
        Op::Authorize { card, amount } => Some(bank.authorize((&cards[card], "123"), amount).await),
        Op::Capture {
            authorization: index,
        } => match authorization(index) {
            Some((id, _, amount)) => Some(bank.capture(&id, amount).await),
            None => None,
        },
        Op::Void {
            authorization: index,
        } => match authorization(index) {
            Some((id, ..)) => Some(bank.void(&id).await),
            None => None,
        },
        Op::Expire {
            authorization: index,
        } => match authorization(index) {
            Some((id, ..)) => {
                let path = format!("/admin/authorizations/{id}/expire");
                Some(bank.client.post(bank.url(&path)).send().await.unwrap())
            }
            None => None,
        },
        Op::Refund { capture } => match pick(&model.captures, capture) {
            Some((id, _, amount)) => Some(bank.refund(&id, amount).await),
            None => None,
        },
    };
    // Nothing to operate on yet: the operation is skipped.
    let Some(response) = response else {
        return (op.clone(), StatusCode::NO_CONTENT, Value::Null);
    };
    let status = response.status();
    (op.clone(), status, response.json().await.unwrap())
}

fn pick(items: &[(String, usize, i64)], index: usize) -> Option<(String, usize, i64)> {
    (!items.is_empty()).then(|| items[index % items.len()].clone())
}

fn apply(model: &mut Model, (op, status, body): (Op, StatusCode, Value)) {
    if status != StatusCode::OK {
        return;
    }
    match op {
        Op::Authorize { card, amount } => {
            let id = body["authorization_id"].as_str().unwrap().to_owned();
            model.authorizations.push((id, card, amount));
            model.cards.entry(card).or_default().1 += amount;
        }
        Op::Capture { .. } => {
            let (card, amount) =
                model.settle(body["authorization_id"].as_str().unwrap(), "capture");
            model.cards.entry(card).or_default().0 -= amount;
            model.captures.push((
                body["capture_id"].as_str().unwrap().to_owned(),
                card,
                amount,
            ));
        }
        Op::Void { .. } => {
            model.settle(body["authorization_id"].as_str().unwrap(), "void");
        }
        Op::Expire { .. } => {
            let id = body["authorization_id"].as_str().unwrap();
            // Expiring an expired authorization answers 200 and changes nothing.
            if model.used.get(id) != Some(&"expire") {
                model.settle(id, "expire");
            }
        }
        Op::Refund { .. } => {
            let capture_id = body["capture_id"].as_str().unwrap();
            let (_, card, amount) = model
                .captures
                .iter()
                .find(|(id, ..)| id == capture_id)
                .cloned()
                .unwrap();
            model.cards.entry(card).or_default().0 += amount;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn concurrent_operations_keep_the_ledger_and_the_model_in_step(
        waves in proptest::collection::vec(proptest::collection::vec(op(), 1..5), 1..8)
    ) {
        let bank = bank();
        runtime().block_on(async {
            let cards: Vec<String> = (0..CARDS).map(|_| fresh_card()).collect();
            for card in &cards {
                let body = json!({"card_number": card, "cvv": "123", "expiry_month": 12, "expiry_year": 2030, "balance": OPENING_BALANCE});
                let response = bank.open_account(&body).await;
                assert_eq!(response.status(), StatusCode::CREATED);
            }
            let mut model = Model::default();
            for wave in &waves {
                // Every operation of a wave runs at once, against the model as
                // it stood before the wave.
                let outcomes = join_all(wave.iter().map(|op| run_op(bank, &cards, &model, op))).await;
                for outcome in outcomes {
                    assert!(outcome.1.is_success() || outcome.1.is_client_error(), "{outcome:?}");
                    apply(&mut model, outcome);
                }
            }
            for (index, card) in cards.iter().enumerate() {
                let (balance_delta, held) = model.cards.get(&index).copied().unwrap_or_default();
                let balance = OPENING_BALANCE + balance_delta;
                assert_eq!(bank.balances(card).await, (balance, balance - held), "card {index}");
            }
            assert!(bank.ledger_verifies().await);
        });
    }
}
