using System.Globalization;
using System.Text;
using DirBackup.Errors;

namespace DirBackup.Store;

/// <summary>
/// A backup's volume name, <c>backup/&lt;vmid&gt;/&lt;type&gt;-&lt;epoch&gt;</c>. Everything that reaches a path
/// goes through <see cref="Parse"/> first: a name that does not parse is an error, never a path.
/// </summary>
public readonly record struct VolumeName(int VmId, GuestType Type, long BackupTime)
{
    public const int MaxLength = 128;
    private const string Shape = "backup/<vmid>/<qemu|lxc>-<epoch>";

    /// <summary>The directory name inside the guest directory, and the archive name's last part.</summary>
    public string BackupDirName => $"{Type.Name()}-{BackupTime.ToString(CultureInfo.InvariantCulture)}";

    /// <summary>What backup_init returns and vzdump prefixes with <c>backup/</c>.</summary>
    public string ArchiveName => $"{VmId.ToString(CultureInfo.InvariantCulture)}/{BackupDirName}";

    public override string ToString() => "backup/" + ArchiveName;

    public string VolId(string storeId) => $"{storeId}:{this}";

    public static VolumeName Parse(string? text)
    {
        if (string.IsNullOrEmpty(text))
        {
            throw Invalid("invalid volume name: empty");
        }
        if (text.Length > MaxLength)
        {
            throw Invalid($"invalid volume name: longer than {MaxLength} characters");
        }
        foreach (char c in text)
        {
            if (char.IsControl(c))
            {
                throw Invalid($"invalid volume name '{Printable(text)}': contains control characters");
            }
        }
        var parts = text.Split('/');
        if (parts.Length != 3 || parts[0] != "backup")
        {
            throw Invalid($"invalid volume name '{text}': expected {Shape}");
        }
        var vmid = ParseVmId(parts[1]) ?? throw Invalid($"invalid volume name '{text}': vmid '{parts[1]}' is not a guest id (100-999999999)");
        int dash = parts[2].LastIndexOf('-');
        if (dash <= 0 || !GuestTypes.TryParse(parts[2][..dash], out var type))
        {
            throw Invalid($"invalid volume name '{text}': unknown backup type in '{parts[2]}' (expected qemu-<epoch> or lxc-<epoch>)");
        }
        var epochText = parts[2][(dash + 1)..];
        if (!IsCanonicalNumber(epochText, 12) || !long.TryParse(epochText, NumberStyles.None, CultureInfo.InvariantCulture, out long epoch))
        {
            throw Invalid($"invalid volume name '{text}': backup time '{epochText}' is not a Unix time");
        }
        return new VolumeName(vmid, type, epoch);
    }

    /// <summary>Guest ids as PVE allows them: 100 to 999999999, no sign, no leading zero.</summary>
    public static int? ParseVmId(string text)
    {
        if (!IsCanonicalNumber(text, 9) || text.Length < 3)
        {
            return null;
        }
        return int.Parse(text, NumberStyles.None, CultureInfo.InvariantCulture);
    }

    public static bool IsValidVmId(long vmid) => vmid >= 100 && vmid <= 999_999_999;

    /// <summary>Parses a backup directory name (<c>qemu-1700000000</c>); null for anything else.</summary>
    public static VolumeName? FromDirectory(int vmid, string dirName)
    {
        int dash = dirName.LastIndexOf('-');
        if (dash <= 0 || !GuestTypes.TryParse(dirName[..dash], out var type))
        {
            return null;
        }
        var epochText = dirName.AsSpan(dash + 1);
        if (!IsCanonicalNumber(epochText, 12) || !long.TryParse(epochText, NumberStyles.None, CultureInfo.InvariantCulture, out long epoch))
        {
            return null;
        }
        return new VolumeName(vmid, type, epoch);
    }

    private static bool IsCanonicalNumber(ReadOnlySpan<char> text, int maxDigits)
    {
        if (text.IsEmpty || text.Length > maxDigits || (text[0] == '0' && text.Length > 1))
        {
            return false;
        }
        foreach (char c in text)
        {
            if (c < '0' || c > '9')
            {
                return false;
            }
        }
        return true;
    }

    private static string Printable(string text)
    {
        var sb = new StringBuilder(text.Length);
        foreach (char c in text)
        {
            sb.Append(char.IsControl(c) ? $"\\x{(int)c:x2}" : c);
        }
        return sb.ToString();
    }

    private static DirBackupException Invalid(string message) => new(ErrorCode.InvalidVolumeName, message);
}
