//! Whether the computer runs on battery: `veild` holds new photos for the charger while it does
//! (`power.on_battery = "pause"`), because protecting one keeps every core busy for seconds and a
//! camera roll would drain a laptop.
//!
//! On Linux the kernel's power supplies are read from `/sys/class/power_supply` (the same rule as
//! systemd's `on_ac_power`: an adapter that is online means mains; otherwise a system battery that
//! discharges, or adapters that are all offline, mean battery). Batteries of devices (a mouse, a
//! phone: `scope` = `Device`) are not the computer's. On macOS `pmset -g batt` says which source
//! the Mac draws from. Anything else, or nothing to read (a desktop, a virtual machine), is
//! [`Power::Unknown`], which never holds a photo.
//!
//! `VEIL_POWER_SUPPLY` names another folder to read instead of `/sys/class/power_supply` (tests).

use std::{
    fmt, fs,
    path::{Path, PathBuf},
};

use crate::config::OnBattery;

/// What new photos do while the computer runs on battery with `power.on_battery = "pause"`.
pub const HELD: &str = "new photos wait for the charger";

/// Where the computer's power comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// A charger or the mains.
    Mains,
    /// Its own battery.
    Battery,
    /// Nothing says (no battery, no adapter, an unknown platform).
    Unknown,
}

impl Power {
    /// Reads the platform's power sources now.
    pub fn now() -> Power {
        if cfg!(target_os = "macos") {
            std::process::Command::new("pmset")
                .args(["-g", "batt"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map_or(Power::Unknown, |o| from_pmset(&String::from_utf8_lossy(&o.stdout)))
        } else {
            from_sysfs(&sysfs_root())
        }
    }

    pub fn on_battery(self) -> bool {
        self == Power::Battery
    }
}

impl fmt::Display for Power {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Power::Mains => "on mains power",
            Power::Battery => "on battery",
            Power::Unknown => "power source unknown",
        })
    }
}

/// The power source and what it means for the photos under `on_battery` (`veil status`, `veil
/// doctor`); `None` when nothing says where the power comes from.
pub fn describe(power: Power, on_battery: OnBattery) -> Option<String> {
    Some(match (power, on_battery) {
        (Power::Unknown, _) => return None,
        (Power::Mains, OnBattery::Pause) => {
            format!("{power} (on battery, {HELD}: power.on_battery = \"pause\")")
        }
        (Power::Mains, OnBattery::Run) => {
            format!("{power} (photos are protected on battery too: power.on_battery = \"run\")")
        }
        (Power::Battery, OnBattery::Pause) => {
            format!("{power}: {HELD} (power.on_battery = \"pause\"; `veil add PHOTO` protects one now)")
        }
        (Power::Battery, OnBattery::Run) => {
            format!("{power}: protecting anyway (power.on_battery = \"run\")")
        }
    })
}

fn sysfs_root() -> PathBuf {
    std::env::var_os("VEIL_POWER_SUPPLY")
        .map_or_else(|| PathBuf::from("/sys/class/power_supply"), PathBuf::from)
}

/// The power source from a `/sys/class/power_supply`-like folder: one sub-folder per supply, with
/// the files `type` (`Mains`, `USB`, `Battery`, …), `online` (adapters), `status` (batteries) and
/// `scope` (`Device` for a peripheral's battery). Unreadable entries are left out.
pub fn from_sysfs(root: &Path) -> Power {
    let Ok(entries) = fs::read_dir(root) else { return Power::Unknown };
    let read = |dir: &Path, name: &str| fs::read_to_string(dir.join(name)).map(|s| s.trim().to_string()).ok();
    let (mut online, mut offline, mut discharging) = (false, false, false);
    for entry in entries.flatten() {
        let dir = entry.path();
        let Some(kind) = read(&dir, "type") else { continue };
        if read(&dir, "scope").is_some_and(|s| s.eq_ignore_ascii_case("device")) {
            continue;
        }
        if kind == "Battery" {
            discharging |= read(&dir, "status").is_some_and(|s| s == "Discharging");
        } else {
            // Mains, USB, USB_C, USB_PD, Wireless, …: an adapter.
            match read(&dir, "online").as_deref() {
                Some("1") => online = true,
                Some("0") => offline = true,
                _ => {}
            }
        }
    }
    if online {
        Power::Mains
    } else if discharging || offline {
        Power::Battery
    } else {
        Power::Unknown
    }
}

/// The power source from `pmset -g batt`, whose first line is `Now drawing from 'AC Power'` or
/// `Now drawing from 'Battery Power'` (or `'UPS Power'`, a desktop's: not held).
pub fn from_pmset(out: &str) -> Power {
    let Some(source) = out.lines().find_map(|l| l.trim().strip_prefix("Now drawing from '")) else {
        return Power::Unknown;
    };
    match source.split('\'').next() {
        Some("AC Power") | Some("UPS Power") => Power::Mains,
        Some("Battery Power") => Power::Battery,
        _ => Power::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supply(root: &Path, name: &str, files: &[(&str, &str)]) {
        let dir = root.join(name);
        fs::create_dir_all(&dir).unwrap();
        for (file, text) in files {
            fs::write(dir.join(file), format!("{text}\n")).unwrap();
        }
    }

    #[test]
    fn a_laptop_is_on_battery_when_its_adapter_is_offline_and_on_mains_when_it_is_online() {
        let d = tempfile::tempdir().unwrap();
        supply(d.path(), "AC", &[("type", "Mains"), ("online", "0")]);
        supply(d.path(), "BAT0", &[("type", "Battery"), ("status", "Discharging"), ("scope", "System")]);
        assert_eq!(from_sysfs(d.path()), Power::Battery);
        supply(d.path(), "AC", &[("online", "1")]);
        supply(d.path(), "BAT0", &[("status", "Charging")]);
        assert_eq!(from_sysfs(d.path()), Power::Mains);
        // A full battery on the charger says "Full" or "Not charging": still mains.
        supply(d.path(), "BAT0", &[("status", "Not charging")]);
        assert_eq!(from_sysfs(d.path()), Power::Mains);
    }

    #[test]
    fn any_online_adapter_means_mains_and_a_discharging_battery_alone_means_battery() {
        let d = tempfile::tempdir().unwrap();
        supply(d.path(), "ucsi-source-psy-USBC000:001", &[("type", "USB"), ("online", "1")]);
        supply(d.path(), "AC", &[("type", "Mains"), ("online", "0")]);
        assert_eq!(from_sysfs(d.path()), Power::Mains);

        // No adapter listed at all, only a battery that discharges.
        let d = tempfile::tempdir().unwrap();
        supply(d.path(), "BAT1", &[("type", "Battery"), ("status", "Discharging")]);
        assert_eq!(from_sysfs(d.path()), Power::Battery);
    }

    #[test]
    fn a_desktop_with_a_wireless_mouse_or_nothing_at_all_is_never_held() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(from_sysfs(d.path()), Power::Unknown);
        supply(
            d.path(),
            "hidpp_battery_0",
            &[("type", "Battery"), ("status", "Discharging"), ("scope", "Device")],
        );
        assert_eq!(from_sysfs(d.path()), Power::Unknown);
        // An entry without a readable type (a broken driver) is left out.
        supply(d.path(), "odd", &[("online", "0")]);
        assert_eq!(from_sysfs(d.path()), Power::Unknown);
        assert_eq!(from_sysfs(&d.path().join("missing")), Power::Unknown);
        assert!(!Power::Unknown.on_battery());
    }

    #[test]
    fn the_power_is_described_with_what_it_means_for_the_photos() {
        assert_eq!(describe(Power::Unknown, OnBattery::Pause), None);
        assert_eq!(
            describe(Power::Battery, OnBattery::Pause).unwrap(),
            "on battery: new photos wait for the charger (power.on_battery = \"pause\"; `veil add PHOTO` \
             protects one now)"
        );
        assert_eq!(
            describe(Power::Battery, OnBattery::Run).unwrap(),
            "on battery: protecting anyway (power.on_battery = \"run\")"
        );
        assert!(describe(Power::Mains, OnBattery::Pause)
            .unwrap()
            .starts_with("on mains power (on battery, new"));
    }

    #[test]
    fn pmset_says_which_source_a_mac_draws_from() {
        let battery =
            "Now drawing from 'Battery Power'\n -InternalBattery-0 (id=4653155)\t87%; discharging; \
                       5:12 remaining present: true\n";
        assert_eq!(from_pmset(battery), Power::Battery);
        assert_eq!(
            from_pmset("Now drawing from 'AC Power'\n -InternalBattery-0\t100%; charged;\n"),
            Power::Mains
        );
        assert_eq!(from_pmset("Now drawing from 'UPS Power'\n"), Power::Mains);
        assert_eq!(from_pmset(""), Power::Unknown);
        assert_eq!(from_pmset("something else entirely"), Power::Unknown);
    }
}
