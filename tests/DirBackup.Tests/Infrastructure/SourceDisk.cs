using System.Diagnostics;
using System.Globalization;
using DirBackup.Qemu;

namespace DirBackup.Tests.Infrastructure;

/// <summary>
/// A guest disk as PVE's backup access presents it: a qcow2 image with a persistent dirty bitmap, exported
/// over NBD by qemu-storage-daemon under the device's name, with the bitmap as meta context. Each backup gets
/// a frozen copy of the disk (what the backup must equal) and an exported copy the daemon may trim, the way
/// it trims PVE's fleecing image; after a successful backup the bitmap is cleared, as QEMU does on teardown.
/// </summary>
public sealed class SourceDisk(string dir, string image, long size, string bitmap)
{
    public string Image => image;
    public long Size => size;
    public string Bitmap => bitmap;
    private string Folder => dir;
    private int _generation;

    public static async Task<SourceDisk> CreateAsync(string dir, long size, string bitmap)
    {
        Directory.CreateDirectory(dir);
        var image = Path.Combine(dir, "disk.qcow2");
        await Run("qemu-img", "create", "-q", "-f", "qcow2", image, size.ToString(CultureInfo.InvariantCulture));
        await Run("qemu-img", "bitmap", "--add", image, bitmap);
        return new SourceDisk(dir, image, size, bitmap);
    }

    /// <summary>Guest writes through qemu-io, which marks the bitmap dirty like a running VM would.</summary>
    public Task WriteAsync(params string[] qemuIoCommands)
    {
        var args = new List<string> { "-f", "qcow2" };
        foreach (var command in qemuIoCommands)
        {
            args.AddRange(["-c", command]);
        }
        args.Add(image);
        return Run("qemu-io", [.. args]);
    }

    /// <summary>QEMU's backup-access-teardown(success): the bitmap starts again from this point.</summary>
    public Task CommitBitmapAsync() => Run("qemu-img", "bitmap", "--clear", image, bitmap);

    public Task<BackupAccess> OpenBackupAccessAsync(string device, string? exportedBitmap = null) =>
        OpenBackupAccessAsync([(this, device)], exportedBitmap);

    /// <summary>Fresh frozen and exported copies of this disk for one backup access.</summary>
    private async Task<(string Frozen, string Exported)> CopyForBackupAsync()
    {
        int generation = ++_generation;
        var frozen = Path.Combine(dir, $"state-{generation}.qcow2");
        var exported = Path.Combine(dir, $"export-{generation}.qcow2");
        // Not sparse: zeroes the guest wrote stay data, as in its image, so only reading finds them (cp would make
        // them holes, which QEMU reports as zero).
        await Run("cp", "--sparse=never", image, frozen);
        await Run("cp", "--sparse=never", image, exported);
        return (frozen, exported);
    }

    /// <summary>
    /// One NBD server exporting every disk under its device name, as QEMU's single NBD server per VM does; the socket
    /// lives in the first disk's directory.
    /// </summary>
    public static async Task<BackupAccess> OpenBackupAccessAsync(IReadOnlyList<(SourceDisk Disk, string Device)> disks, string? exportedBitmap = null)
    {
        var copies = new Dictionary<string, (string Frozen, string Exported)>();
        var nodes = new List<string>();
        var exports = new List<string>();
        for (int i = 0; i < disks.Count; i++)
        {
            var (disk, device) = disks[i];
            var copy = await disk.CopyForBackupAsync();
            copies[device] = copy;
            nodes.AddRange([
                "--blockdev", $"driver=file,node-name=f{i},filename={copy.Exported}",
                "--blockdev", $"driver=qcow2,node-name=n{i},file=f{i},discard=unmap"]);
            exports.AddRange(["--export", $"type=nbd,id={device},node-name=n{i},name={device},writable=on,bitmaps.0={exportedBitmap ?? disk.Bitmap}"]);
        }
        var socket = Path.Combine(disks[0].Disk.Folder, $"nbd-{disks[0].Disk._generation}.backup-access");
        // QEMU takes its options in order: the nodes, then the server, then the exports on it.
        var args = nodes.Concat(["--nbd-server", $"addr.type=unix,addr.path={socket}"]).Concat(exports);
        var psi = new ProcessStartInfo(StorageDaemon.Tool) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var arg in args)
        {
            psi.ArgumentList.Add(arg);
        }
        var process = Process.Start(psi)!;
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (!File.Exists(socket))
        {
            if (process.HasExited || DateTime.UtcNow > deadline)
            {
                throw new InvalidOperationException("qemu-storage-daemon did not export the disk: " + await process.StandardError.ReadToEndAsync());
            }
            await Task.Delay(10);
        }
        return new BackupAccess(process, socket, copies);
    }

    public static async Task Run(string tool, params string[] args)
    {
        await ChildProcess.RunAsync(tool, args, CancellationToken.None);
    }

    /// <summary>The ranges a raw file reports as data: qemu-img maps a raw file with SEEK_DATA/SEEK_HOLE.</summary>
    public static async Task<List<(long Start, long Length)>> DataRangesAsync(string rawFile)
    {
        using var map = System.Text.Json.JsonDocument.Parse(await ChildProcess.RunAsync("qemu-img", ["map", "--output=json", "-f", "raw", rawFile], CancellationToken.None));
        return map.RootElement.EnumerateArray().Where(e => e.GetProperty("data").GetBoolean())
            .Select(e => (e.GetProperty("start").GetInt64(), e.GetProperty("length").GetInt64())).ToList();
    }
}

public sealed class BackupAccess(Process process, string socket, IReadOnlyDictionary<string, (string Frozen, string Exported)> devices) : IAsyncDisposable
{
    public string SocketPath => socket;

    /// <summary>The image behind the (first) export, which the backup trims as it copies (PVE's fleecing image).</summary>
    public string ExportedImage => devices.Values.First().Exported;

    /// <summary>The (first) disk as it was when this backup access started: what the backup must equal.</summary>
    public string FrozenState => devices.Values.First().Frozen;

    public string FrozenStateOf(string device) => devices[device].Frozen;
    public async ValueTask DisposeAsync()
    {
        // SIGTERM: QEMU writes its cached qcow2 metadata back before it exits.
        bool stopped = await StorageDaemon.TerminateAsync(process, TimeSpan.FromSeconds(60));
        if (!stopped)
        {
            process.Kill();
        }
        process.Dispose();
        Xunit.Assert.True(stopped, "the backup access's qemu-storage-daemon did not stop within 60 s");
    }
}
