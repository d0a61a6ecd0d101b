use clap::Parser;
use mock_bank::{Application, Settings, telemetry};
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_logging();
    let settings = Settings::parse();
    let application = Application::build(settings).await?;
    tracing::info!(port = application.port(), "mock-bank listening");
    let handle = application.handle();
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: finishing in-flight requests"),
            _ = interrupt.recv() => tracing::info!("SIGINT: finishing in-flight requests"),
        }
        handle.stop(true).await;
    });
    application.run_until_stopped().await?;
    tracing::info!("mock-bank stopped");
    Ok(())
}
