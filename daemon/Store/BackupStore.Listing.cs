using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using DirBackup.Errors;

namespace DirBackup.Store;

public sealed partial class BackupStore
{
    /// <summary>Committed backups, one manifest read each; a damaged manifest is skipped and reported.</summary>
    public List<BackupEntry> ListBackups(int? vmid, Action<string>? warn = null)
    {
        var result = new List<BackupEntry>();
        if (vmid is int one)
        {
            ListGuest(one, result, warn);
        }
        else
        {
            foreach (var dir in EnumerateDirectories(Root))
            {
                var id = VolumeName.ParseVmId(Path.GetFileName(dir));
                if (id is int guest)
                {
                    ListGuest(guest, result, warn);
                }
            }
        }
        result.Sort((a, b) => string.CompareOrdinal(a.Volume.ToString(), b.Volume.ToString()));
        return result;
    }

    private void ListGuest(int vmid, List<BackupEntry> result, Action<string>? warn)
    {
        foreach (var dir in EnumerateDirectories(GuestDir(vmid)))
        {
            var volume = VolumeName.FromDirectory(vmid, Path.GetFileName(dir));
            if (volume is not VolumeName name)
            {
                continue;
            }
            Manifest manifest;
            try
            {
                manifest = Manifest.FromBytes(File.ReadAllBytes(Path.Combine(dir, Manifest.FileName)));
            }
            catch (Exception e) when (e is IOException or JsonException or UnauthorizedAccessException)
            {
                warn?.Invoke($"skipping '{dir}': no readable manifest ({e.Message})");
                continue;
            }
            result.Add(new BackupEntry(name, manifest));
        }
    }

    private static IEnumerable<string> EnumerateDirectories(string path)
    {
        try
        {
            return Directory.EnumerateDirectories(path).ToList();
        }
        catch (DirectoryNotFoundException)
        {
            return [];
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw DirBackupException.Io($"cannot list '{path}': {e.Message}");
        }
    }

    /// <summary>A list_volumes entry with every key PVE's content index knows (PVE-API.md 2.6).</summary>
    public VolumeInfo ToVolumeInfo(BackupEntry entry)
    {
        var parent = entry.Manifest.Parents.FirstOrDefault();
        return new VolumeInfo(
            VolId: entry.Volume.VolId(config.StoreId),
            Content: "backup",
            Format: VolumeFormat,
            Size: entry.Manifest.Size,
            CTime: entry.Volume.BackupTime,
            VmId: entry.Volume.VmId,
            SubType: entry.Volume.Type.Name(),
            Notes: entry.Manifest.Notes,
            Protected: entry.Manifest.Protected,
            Parent: parent is null ? null : $"{config.StoreId}:backup/{entry.Volume.VmId.ToString(CultureInfo.InvariantCulture)}/{parent}");
    }

    /// <summary>The content index's free-text format of every backup on this storage.</summary>
    public const string VolumeFormat = "dirbackup";
}

public readonly record struct BackupEntry(VolumeName Volume, Manifest Manifest);

public sealed record VolumeInfo(
    [property: JsonPropertyName("volid")] string VolId,
    [property: JsonPropertyName("content")] string Content,
    [property: JsonPropertyName("format")] string Format,
    [property: JsonPropertyName("size")] long Size,
    [property: JsonPropertyName("ctime")] long CTime,
    [property: JsonPropertyName("vmid")] int VmId,
    [property: JsonPropertyName("subtype")] string SubType,
    [property: JsonPropertyName("notes"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Notes,
    [property: JsonPropertyName("protected"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)] bool Protected,
    [property: JsonPropertyName("parent"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Parent);
