using System.Text.Json;
using DirBackup.Qemu;

namespace DirBackup.Tests.Infrastructure;

/// <summary>What qemu-img info says of one image (never its backing chain): the tests' independent reading of a header.</summary>
public sealed record QemuImgInfo(long VirtualSize, string? BackingFile, string? DataFile)
{
    public static async Task<QemuImgInfo> ReadAsync(string path)
    {
        var json = await ChildProcess.RunAsync("qemu-img", ["info", "--output=json", "-f", "qcow2", path], CancellationToken.None);
        using var info = JsonDocument.Parse(json);
        var root = info.RootElement;
        string? dataFile = root.TryGetProperty("format-specific", out var specific) && specific.TryGetProperty("data", out var data)
            && data.TryGetProperty("data-file", out var file) ? file.GetString() : null;
        return new QemuImgInfo(
            root.GetProperty("virtual-size").GetInt64(),
            root.TryGetProperty("backing-filename", out var backing) ? backing.GetString() : null,
            dataFile);
    }
}
