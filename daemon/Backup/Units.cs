using System.Globalization;

namespace DirBackup.Backup;

/// <summary>Sizes and rates the way PVE's task logs print them (1024-based, one decimal).</summary>
public static class Units
{
    private static readonly string[] Names = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

    public static string Bytes(double bytes)
    {
        int unit = 0;
        while (bytes >= 1024 && unit < Names.Length - 1)
        {
            bytes /= 1024;
            unit++;
        }
        return unit == 0 ? $"{bytes.ToString("0", CultureInfo.InvariantCulture)} B" : $"{bytes.ToString("0.0", CultureInfo.InvariantCulture)} {Names[unit]}";
    }

    public static string Percent(double part, double whole) =>
        whole <= 0 ? "0" : Math.Floor(part * 100 / whole).ToString("0", CultureInfo.InvariantCulture);
}
