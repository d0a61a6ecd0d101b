use serde::Serialize;
use sqlx::PgConnection;

use crate::api::error::BankError;
use crate::domain::{CardNumber, Cvv, Expiry};
use crate::ledger::{self, Movement};

/// The cards every fresh database holds: (number, cvv, month, year, balance in cents).
pub const TEST_CARDS: [(&str, &str, i16, i16, i64); 4] = [
    ("4111111111111111", "123", 12, 2030, 1_000_000),
    ("4242424242424242", "456", 6, 2030, 50_000),
    ("5555555555554444", "789", 9, 2030, 0),
    ("5105105105105100", "321", 3, 2020, 500_000),
];

#[derive(Debug)]
pub struct NewAccount {
    pub card_number: CardNumber,
    pub cvv: Cvv,
    pub expiry: Expiry,
    pub balance: i64,
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Account {
    pub card_number: String,
    pub balance: i64,
    pub available_balance: i64,
}

/// Opens an account funded through the journal; `AccountExists` if taken.
pub async fn open_account(conn: &mut PgConnection, new: &NewAccount) -> Result<Account, BankError> {
    let inserted = sqlx::query(
        "INSERT INTO accounts (card_number, cvv, expiry_month, expiry_year, balance, available_balance) \
         VALUES ($1, $2, $3, $4, 0, 0) ON CONFLICT (card_number) DO NOTHING",
    )
    .bind(new.card_number.as_str())
    .bind(new.cvv.as_str())
    .bind(new.expiry.month)
    .bind(new.expiry.year)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(BankError::AccountExists);
    }
    ledger::post(
        conn,
        Movement::Open,
        new.card_number.as_str(),
        new.balance,
        None,
    )
    .await?;
    get_account(conn, new.card_number.as_str())
        .await?
        .ok_or_else(|| BankError::Internal(anyhow::anyhow!("account vanished after insert")))
}

pub async fn get_account(
    conn: &mut PgConnection,
    card_number: &str,
) -> Result<Option<Account>, BankError> {
    Ok(sqlx::query_as(
        "SELECT card_number, balance, available_balance FROM accounts WHERE card_number = $1",
    )
    .bind(card_number)
    .fetch_optional(conn)
    .await?)
}

/// Seeds the test cards into a database that has no account yet.
pub async fn seed_test_cards(conn: &mut PgConnection) -> Result<(), BankError> {
    // Two banks starting on one fresh database must not both seed it.
    sqlx::query("SELECT pg_advisory_xact_lock(8787)")
        .execute(&mut *conn)
        .await?;
    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts")
        .fetch_one(&mut *conn)
        .await?;
    if existing > 0 {
        return Ok(());
    }
    for (number, cvv, month, year, balance) in TEST_CARDS {
        let account = NewAccount {
            card_number: CardNumber::parse(number)?,
            cvv: Cvv::parse(cvv)?,
            expiry: Expiry::parse(month.into(), year.into())?,
            balance,
        };
        open_account(conn, &account).await?;
    }
    Ok(())
}
