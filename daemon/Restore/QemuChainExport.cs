using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using DirBackup.Errors;
using DirBackup.Native;
using DirBackup.Qemu;

namespace DirBackup.Restore;

/// <summary>
/// A device's validated chain served by qemu-storage-daemon as a read-only FUSE file: a regular file holding the
/// raw disk, which is what PVE's restore (stat, <c>qemu-img info -f raw</c>, <c>qemu-img convert -f raw</c>) accepts.
/// Every layer is its own read-only qcow2 node whose backing node is named explicitly, so QEMU never follows a
/// backing file name from an image header.
/// </summary>
public sealed class QemuChainExport : IChainExport
{
    private readonly Process _process;

    private QemuChainExport(Process process, string path)
    {
        _process = process;
        Path = path;
    }

    public string Path { get; }

    public static async Task<QemuChainExport> StartAsync(IReadOnlyList<ChainLayer> layers, string mountpoint, CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(mountpoint)!);
        await File.WriteAllBytesAsync(mountpoint, [], cancellationToken).ConfigureAwait(false);
        // Our own stdout is not handed down: a child outliving a crashed daemon would keep its log pipe open.
        var psi = new ProcessStartInfo(StorageDaemon.Tool) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        for (int i = 0; i < layers.Count; i++)
        {
            psi.ArgumentList.Add("--blockdev");
            psi.ArgumentList.Add(JsonSerializer.Serialize(new Dictionary<string, object?>
            {
                ["driver"] = "file", ["node-name"] = $"f{i}", ["filename"] = layers[i].Path, ["read-only"] = true,
            }));
            psi.ArgumentList.Add("--blockdev");
            psi.ArgumentList.Add(JsonSerializer.Serialize(new Dictionary<string, object?>
            {
                ["driver"] = "qcow2", ["node-name"] = $"l{i}", ["file"] = $"f{i}", ["read-only"] = true,
                ["backing"] = i == 0 ? null : $"l{i - 1}",
            }));
        }
        psi.ArgumentList.Add("--export");
        psi.ArgumentList.Add(JsonSerializer.Serialize(new Dictionary<string, object?>
        {
            ["type"] = "fuse", ["id"] = "restore", ["node-name"] = $"l{layers.Count - 1}", ["mountpoint"] = mountpoint, ["writable"] = false,
        }));
        psi.ArgumentList.Add("--pidfile");
        psi.ArgumentList.Add(mountpoint + ".pid");
        var process = Process.Start(psi) ?? throw DirBackupException.Io($"cannot start {StorageDaemon.Tool}");
        var export = new QemuChainExport(process, mountpoint);
        var stderr = process.StandardError.ReadToEndAsync(CancellationToken.None);
        _ = process.StandardOutput.ReadToEndAsync(CancellationToken.None);
        long size = layers[^1].Size;
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (new FileInfo(mountpoint).Length != size)
        {
            if (process.HasExited)
            {
                Remove(mountpoint);
                throw DirBackupException.Io($"{StorageDaemon.Tool} could not export the chain: {DirBackupException.OneLine(await stderr.ConfigureAwait(false))}");
            }
            if (DateTime.UtcNow > deadline || cancellationToken.IsCancellationRequested)
            {
                await export.StopAsync().ConfigureAwait(false);
                cancellationToken.ThrowIfCancellationRequested();
                throw DirBackupException.Io($"the export of {mountpoint} did not appear within 30 s");
            }
            await Task.Delay(10, CancellationToken.None).ConfigureAwait(false);
        }
        return export;
    }

    /// <summary>SIGTERM unmounts; an export that does not go is unmounted lazily and killed.</summary>
    public async Task StopAsync()
    {
        if (!await StorageDaemon.TerminateAsync(_process, TimeSpan.FromSeconds(20)).ConfigureAwait(false))
        {
            await ChildProcess.RunAsync("umount", ["-l", Path], CancellationToken.None).ConfigureAwait(false);
            _process.Kill();
        }
        _process.Dispose();
        Remove(Path);
    }

    private static void Remove(string mountpoint)
    {
        foreach (var file in new[] { mountpoint, mountpoint + ".pid" })
        {
            try
            {
                File.Delete(file);
            }
            catch (IOException)
            {
            }
        }
    }

    /// <summary>
    /// Exports (and backup targets) left by a daemon that died: their qemu-storage-daemon may still run and hold the FUSE mount.
    /// Run at start, before anything is served.
    /// </summary>
    public static async Task RemoveLeftoversAsync(string directory, string pattern = "*")
    {
        if (!Directory.Exists(directory))
        {
            return;
        }
        var mounts = File.ReadAllLines("/proc/self/mountinfo").Select(l => l.Split(' ')[4]).ToHashSet(StringComparer.Ordinal);
        foreach (var pidFile in Directory.EnumerateFiles(directory, pattern + ".pid"))
        {
            if (int.TryParse(File.ReadAllText(pidFile).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out int pid)
                && File.Exists($"/proc/{pid}/cmdline")
                && File.ReadAllText($"/proc/{pid}/cmdline").StartsWith(StorageDaemon.Tool, StringComparison.Ordinal))
            {
                Libc.kill(pid, 9);
            }
        }
        foreach (var dir in pattern == "*" ? Directory.EnumerateDirectories(directory) : [])
        {
            // A container restore's squashfs mount.
            if (mounts.Contains(dir))
            {
                await ChildProcess.RunAsync("umount", ["-l", dir], CancellationToken.None).ConfigureAwait(false);
            }
            Directory.Delete(dir, recursive: false);
        }
        foreach (var file in Directory.EnumerateFiles(directory, pattern))
        {
            if (mounts.Contains(file))
            {
                await ChildProcess.RunAsync("umount", ["-l", file], CancellationToken.None).ConfigureAwait(false);
            }
            Remove(file.EndsWith(".pid", StringComparison.Ordinal) ? file[..^4] : file);
        }
    }
}
