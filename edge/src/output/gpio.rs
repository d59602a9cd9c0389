//! The GPIO alarm line through the Linux character device: requested at the alarm level,
//! so a crashed or stopped process leaves the controller's input at alarm.

use serde::Deserialize;

#[cfg(all(feature = "gpio", target_os = "linux"))]
use super::AlarmLine;
#[cfg(all(feature = "gpio", target_os = "linux"))]
use crate::error::EdgeError;

/// GPIO settings; `[gpio]` in `edge.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpioConfig {
    /// e.g. `/dev/gpiochip0`.
    pub chip: Option<String>,
    pub line: u32,
    /// Alarm is the low level (the default): a cut wire, a crash or no power read as
    /// alarm when the controller pulls the input low.
    pub active_low: bool,
    /// Release the line to alarm if the frame loop shows no progress for this long.
    pub watchdog_ms: u64,
}

impl Default for GpioConfig {
    fn default() -> Self {
        Self {
            chip: None,
            line: 0,
            active_low: true,
            watchdog_ms: 1000,
        }
    }
}

/// A GPIO line through the Linux character device (`gpiocdev`). Requested at the alarm
/// level; when the process exits the kernel releases it, and the board's default (pull
/// the controller's input to the alarm level) applies.
#[cfg(all(feature = "gpio", target_os = "linux"))]
pub struct GpioLine {
    request: gpiocdev::Request,
    offset: u32,
    name: String,
}

#[cfg(all(feature = "gpio", target_os = "linux"))]
impl GpioLine {
    pub fn open(config: &GpioConfig) -> Result<Self, EdgeError> {
        let chip = config
            .chip
            .clone()
            .ok_or_else(|| EdgeError::invalid("gpio.chip", "no GPIO chip configured"))?;
        let mut builder = gpiocdev::Request::builder();
        builder
            .on_chip(chip.as_str())
            .with_consumer("oodmon-edge")
            .with_line(config.line)
            .as_output(gpiocdev::line::Value::Active);
        if config.active_low {
            builder.as_active_low();
        } else {
            builder.as_active_high();
        }
        let request = builder.request().map_err(|e| EdgeError::Gpio {
            line: format!("GPIO {chip} line {}", config.line),
            problem: e.to_string(),
        })?;
        Ok(Self {
            request,
            offset: config.line,
            name: format!("GPIO {chip} line {}", config.line),
        })
    }
}

#[cfg(all(feature = "gpio", target_os = "linux"))]
impl AlarmLine for GpioLine {
    fn set_alarm(&mut self, alarm: bool) -> std::io::Result<()> {
        use gpiocdev::line::Value;
        self.request
            .set_value(
                self.offset,
                if alarm {
                    Value::Active
                } else {
                    Value::Inactive
                },
            )
            .map_err(std::io::Error::other)
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
}
