use clap::Parser;
use mock_bank::{Application, Settings, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_logging();
    let settings = Settings::parse();
    let application = Application::build(settings).await?;
    tracing::info!(port = application.port(), "mock-bank listening");
    service_kit::shutdown::on_signal(application.handle())?;
    application.run_until_stopped().await?;
    tracing::info!("mock-bank stopped");
    Ok(())
}
