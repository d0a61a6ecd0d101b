//! The double-entry journal and the balances it projects.
//!
//! Each card has two ledger accounts, `available` and `held`; a card's
//! balance is their sum. Money enters the bank through `bank:funding` and
//! leaves through `bank:settlement`. A [`Movement`] names the legs, and
//! [`post`] appends the entry and moves the account projection in the same
//! transaction, so the two can only disagree if the database is edited by
//! hand, which is what [`verify`] looks for.

use std::sync::LazyLock;

use serde::Serialize;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::QueryAs;
use sqlx::{FromRow, PgConnection, Postgres};
use uuid::Uuid;

const FUNDING: &str = "bank:funding";
const SETTLEMENT: &str = "bank:settlement";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Movement {
    /// A new account's opening balance.
    Open,
    /// A hold: available −= amount.
    Authorize,
    /// The hold is consumed: balance −= amount.
    Capture,
    /// The hold is released: available += amount.
    Void,
    /// The hold of an expired authorization is released.
    Expire,
    /// balance += amount and available += amount.
    Refund,
}

impl Movement {
    fn kind(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Authorize => "authorize",
            Self::Capture => "capture",
            Self::Void => "void",
            Self::Expire => "expire",
            Self::Refund => "refund",
        }
    }

    /// The entry's legs as (ledger, signed amount); they sum to zero.
    fn legs(self, card_number: &str, amount: i64) -> [(String, i64); 2] {
        let available = format!("card:{card_number}:available");
        let held = format!("card:{card_number}:held");
        let (from, to) = match self {
            Self::Open => (FUNDING.to_owned(), available),
            Self::Authorize => (available, held),
            Self::Capture => (held, SETTLEMENT.to_owned()),
            Self::Void | Self::Expire => (held, available),
            Self::Refund => (SETTLEMENT.to_owned(), available),
        };
        [(from, -amount), (to, amount)]
    }

    /// How the account's (balance, available_balance) move.
    fn projection(self, amount: i64) -> (i64, i64) {
        match self {
            Self::Open | Self::Refund => (amount, amount),
            Self::Authorize => (0, -amount),
            Self::Capture => (-amount, 0),
            Self::Void | Self::Expire => (0, amount),
        }
    }
}

/// Appends one journal entry and applies it to the account's balances, in
/// one statement. Call inside the transaction that does the operation it
/// records. A zero amount writes the entry without legs.
pub async fn post(
    conn: &mut PgConnection,
    movement: Movement,
    card_number: &str,
    amount: i64,
    reference: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    let posting = Posting {
        movement,
        card_number,
        amount,
        reference,
    };
    static POST: LazyLock<String> = LazyLock::new(|| Posting::statement(&Surroundings::default()));
    let _: (i32,) = posting.bind(sqlx::query_as(&POST)).fetch_one(conn).await?;
    Ok(())
}

/// One journal entry, to be posted.
pub struct Posting<'a> {
    pub movement: Movement,
    pub card_number: &'a str,
    pub amount: i64,
    pub reference: Option<Uuid>,
}

type RecordQuery<'q, R> = QueryAs<'q, Postgres, R, PgArguments>;

/// The rest of a statement that posts an entry: the operation's own work
/// around it, so that both cost one round trip. Their parameters are
/// numbered from `$10` (the posting's own are `$1` to `$9`; `$7` is the
/// card number).
pub struct Surroundings<'s> {
    /// Common table expressions that come before the posting's, without
    /// the `WITH`; empty for none.
    pub before: &'s str,
    /// When false, nothing is posted (may name the CTEs in `before`).
    pub when: &'s str,
    /// The query whose one row the statement returns.
    pub answer: &'s str,
    /// A CTE in `before` that locked the account's row (`FOR UPDATE`) and
    /// selected its `balance` and `available_balance`, to compute the new
    /// balances from; `None` computes them from the row the update finds.
    ///
    /// A statement that waited for that lock must name it: its snapshot
    /// predates whatever committed meanwhile, and although an `UPDATE`
    /// redoes its sums on the latest version, Postgres checks constraints on
    /// its first attempt. A hold whose funds a void released while it
    /// waited failed `available_balance >= 0` on the older version.
    pub balances_from: Option<&'s str>,
}

impl Default for Surroundings<'_> {
    fn default() -> Self {
        Self {
            before: "",
            when: "true",
            answer: "SELECT 1",
            balances_from: None,
        }
    }
}

impl Posting<'_> {
    /// The statement that posts an entry, if `around.when` holds, together
    /// with `around`, and returns the row of `around.answer`. Bind the
    /// entry's parameters with [`Posting::bind`], then `around`'s own.
    pub fn statement(around: &Surroundings<'_>) -> String {
        let Surroundings {
            before,
            when,
            answer,
            balances_from,
        } = around;
        let before = if before.is_empty() {
            String::new()
        } else {
            format!("{before}, ")
        };
        let (from, row) = match balances_from {
            Some(locked) => (format!("FROM {locked} "), format!("{locked}.")),
            None => (String::new(), String::new()),
        };
        format!(
            "WITH {before}\
             entry AS ( \
               INSERT INTO journal_entries (kind, reference) SELECT $1, $2 WHERE {when} RETURNING id), \
             legs AS ( \
               INSERT INTO journal_legs (entry_id, ledger, amount) \
               SELECT entry.id, leg.ledger, leg.amount \
               FROM entry, (VALUES ($3, $4::bigint), ($5, $6::bigint)) AS leg (ledger, amount) \
               WHERE leg.amount <> 0), \
             moved AS ( \
               UPDATE accounts SET balance = {row}balance + $8, \
                 available_balance = {row}available_balance + $9 {from}\
               WHERE accounts.card_number = $7 AND EXISTS (SELECT 1 FROM entry)), \
             answer AS ({answer}) \
             SELECT * FROM answer"
        )
    }

    /// Binds this entry's parameters, `$1` to `$9`, to a [`Posting::statement`].
    pub fn bind<'q, R>(&'q self, query: RecordQuery<'q, R>) -> RecordQuery<'q, R>
    where
        R: for<'r> FromRow<'r, PgRow>,
    {
        assert!(self.amount >= 0, "journal amounts are magnitudes");
        let [(from, debit), (to, credit)] = self.movement.legs(self.card_number, self.amount);
        let (balance_delta, available_delta) = self.movement.projection(self.amount);
        query
            .bind(self.movement.kind())
            .bind(self.reference)
            .bind(from)
            .bind(debit)
            .bind(to)
            .bind(credit)
            .bind(self.card_number)
            .bind(balance_delta)
            .bind(available_delta)
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Verification {
    pub ok: bool,
    pub accounts_checked: i64,
    pub entries_checked: i64,
    pub mismatches: Vec<Mismatch>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Mismatch {
    /// `card:<number>` for an account, `entry:<id>` for an unbalanced entry.
    pub subject: String,
    pub field: String,
    pub expected: i64,
    pub actual: i64,
}

#[derive(sqlx::FromRow)]
struct AccountCheck {
    card_number: String,
    balance: i64,
    available_balance: i64,
    journal_balance: i64,
    journal_available: i64,
    journal_held: i64,
    active_holds: i64,
}

/// Recomputes every balance from the journal and compares.
///
/// Also checks that every entry balances and that each card's `held` ledger
/// equals the sum of its active authorizations (no orphan holds).
pub async fn verify(conn: &mut PgConnection) -> Result<Verification, sqlx::Error> {
    let accounts: Vec<AccountCheck> = sqlx::query_as(
        "WITH legs AS ( \
           SELECT split_part(ledger, ':', 2) AS card_number, split_part(ledger, ':', 3) AS side, \
                  sum(amount)::BIGINT AS total \
           FROM journal_legs WHERE ledger LIKE 'card:%' GROUP BY 1, 2), \
         holds AS ( \
           SELECT card_number, sum(amount)::BIGINT AS total FROM authorizations \
           WHERE state = 'active' GROUP BY card_number) \
         SELECT a.card_number, a.balance, a.available_balance, \
           coalesce((SELECT sum(total) FROM legs l WHERE l.card_number = a.card_number), 0)::BIGINT AS journal_balance, \
           coalesce((SELECT total FROM legs l WHERE l.card_number = a.card_number AND side = 'available'), 0) AS journal_available, \
           coalesce((SELECT total FROM legs l WHERE l.card_number = a.card_number AND side = 'held'), 0) AS journal_held, \
           coalesce((SELECT total FROM holds h WHERE h.card_number = a.card_number), 0) AS active_holds \
         FROM accounts a ORDER BY a.card_number",
    )
    .fetch_all(&mut *conn)
    .await?;
    let unbalanced: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT entry_id, sum(amount)::BIGINT FROM journal_legs GROUP BY entry_id HAVING sum(amount) <> 0",
    )
    .fetch_all(&mut *conn)
    .await?;
    let entries_checked: i64 = sqlx::query_scalar("SELECT count(*) FROM journal_entries")
        .fetch_one(&mut *conn)
        .await?;

    let mut mismatches = Vec::new();
    for a in &accounts {
        let subject = format!("card:{}", a.card_number);
        let checks = [
            ("balance", a.journal_balance, a.balance),
            (
                "available_balance",
                a.journal_available,
                a.available_balance,
            ),
            ("held", a.active_holds, a.journal_held),
        ];
        for (field, expected, actual) in checks {
            if expected != actual {
                mismatches.push(Mismatch {
                    subject: subject.clone(),
                    field: field.to_owned(),
                    expected,
                    actual,
                });
            }
        }
    }
    for (entry_id, sum) in unbalanced {
        mismatches.push(Mismatch {
            subject: format!("entry:{entry_id}"),
            field: "sum".to_owned(),
            expected: 0,
            actual: sum,
        });
    }
    Ok(Verification {
        ok: mismatches.is_empty(),
        accounts_checked: i64::try_from(accounts.len()).unwrap_or(i64::MAX),
        entries_checked,
        mismatches,
    })
}

#[cfg(test)]
mod tests {
    use super::Movement;

    const ALL: [Movement; 6] = [
        Movement::Open,
        Movement::Authorize,
        Movement::Capture,
        Movement::Void,
        Movement::Expire,
        Movement::Refund,
    ];

    #[test]
    fn every_movement_balances_and_projects_its_card_legs() {
        for movement in ALL {
            let legs = movement.legs("4111111111111111", 700);
            assert_eq!(legs.iter().map(|(_, a)| a).sum::<i64>(), 0, "{movement:?}");
            let on = |side: &str| -> i64 {
                legs.iter()
                    .filter(|(l, _)| l.ends_with(side))
                    .map(|(_, a)| a)
                    .sum()
            };
            let (balance, available) = movement.projection(700);
            assert_eq!(available, on(":available"), "{movement:?}");
            assert_eq!(balance, on(":available") + on(":held"), "{movement:?}");
        }
    }
}
