using System.Text.Json;
using System.Text.Json.Serialization;

namespace DirBackup.Store;

/// <summary>
/// What a backup is, in one small file per backup. list_volumes reads only manifests, never image files,
/// so everything a listing shows lives here. Unknown keys written by a newer daemon survive a rewrite.
/// </summary>
public sealed class Manifest
{
    public const int CurrentFormat = 1;
    public const string FileName = "manifest.json";

    [JsonPropertyName("format")] public int Format { get; set; } = CurrentFormat;
    [JsonPropertyName("vmid")] public int VmId { get; set; }
    [JsonPropertyName("type")] public string Type { get; set; } = "";
    [JsonPropertyName("backup-time")] public long BackupTime { get; set; }
    /// <summary>Bytes this backup adds on disk (its own files, not its parents').</summary>
    [JsonPropertyName("size")] public long Size { get; set; }
    [JsonPropertyName("notes")] public string? Notes { get; set; }
    [JsonPropertyName("protected")] public bool Protected { get; set; }
    [JsonPropertyName("devices")] public List<ManifestDevice> Devices { get; set; } = [];
    /// <summary>Container archive file name (archive.tar or archive.sqfs); null for VMs.</summary>
    [JsonPropertyName("archive")] public string? Archive { get; set; }
    [JsonPropertyName("guest-config")] public string? GuestConfig { get; set; }
    [JsonPropertyName("firewall-config")] public string? FirewallConfig { get; set; }
    /// <summary>
    /// Set while this backup is being deleted by merging it into the backups layered on it: its own images no
    /// longer hold its contents, so it is neither listed nor restored, only finished off by the next delete or prune.
    /// </summary>
    [JsonPropertyName("merging"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)] public bool Merging { get; set; }

    [JsonExtensionData] public Dictionary<string, JsonElement>? Extra { get; set; }

    /// <summary>The backups this one's images are layered on (backup directory names, newest first).</summary>
    public IEnumerable<string> Parents => Devices.Select(d => d.Parent).OfType<string>().Distinct().OrderDescending(StringComparer.Ordinal);

    public static readonly JsonSerializerOptions JsonOptions = new()
    {
        WriteIndented = true,
        DefaultIgnoreCondition = JsonIgnoreCondition.Never,
    };

    public byte[] ToBytes() => JsonSerializer.SerializeToUtf8Bytes(this, JsonOptions);

    public static Manifest FromBytes(ReadOnlySpan<byte> json) =>
        JsonSerializer.Deserialize<Manifest>(json, JsonOptions) ?? throw new JsonException("manifest is null");
}

public sealed class ManifestDevice
{
    [JsonPropertyName("name")] public string Name { get; set; } = "";
    [JsonPropertyName("size")] public long Size { get; set; }
    [JsonPropertyName("file")] public string File { get; set; } = "";
    /// <summary>Backup directory name (qemu-&lt;epoch&gt;) of the parent whose image is this one's backing file; null for a full image.</summary>
    [JsonPropertyName("parent")] public string? Parent { get; set; }

    [JsonExtensionData] public Dictionary<string, JsonElement>? Extra { get; set; }
}
